package datapath

import (
	"slices"
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []uint16
		wantErr string // substring of the error; "" means no error
	}{
		{in: "", want: nil},
		{in: "  ", want: nil},
		{in: "5432", want: []uint16{5432}},
		{in: "5432,9300", want: []uint16{5432, 9300}},
		{in: "9300, 5432 ,80", want: []uint16{80, 5432, 9300}},
		{in: "80,80,443", want: []uint16{80, 443}},
		{in: "1,65535", want: []uint16{1, 65535}},
		{in: "abc", wantErr: `entry 1 ("abc") is not a port number`},
		{in: "70000", wantErr: "port 70000 is out of range 1-65535"},
		{in: "0", wantErr: "port 0 is out of range"},
		{in: "5432,,x", wantErr: "entry 2 is empty"},
		{in: "5432,", wantErr: "entry 2 is empty"},
		{in: ",5432", wantErr: "entry 1 is empty"},
		{in: "-1", wantErr: "not a port number"},
		{in: "+80", wantErr: "not a port number"},
		{in: "80;443", wantErr: "not a port number"},
		{in: "99999999999999999999", wantErr: "not a port number"},
		{in: "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", want: []uint16{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}},
		{in: "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", wantErr: "17 ports given, at most 16"},
	} {
		got, err := ParsePorts(tc.in)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParsePorts(%q): unexpected error %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParsePorts(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
		case tc.wantErr == "" && !slices.Equal(got, tc.want):
			t.Errorf("ParsePorts(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
