package main

import (
	"slices"
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []uint16
		err  string
	}{
		{"", nil, ""},
		{"  ", nil, ""},
		{"5432", []uint16{5432}, ""},
		{"5432,9300", []uint16{5432, 9300}, ""},
		{" 5432 , 9300 ", []uint16{5432, 9300}, ""},
		{"65535", []uint16{65535}, ""},
		{"65536", nil, "not a port"},
		{"0", nil, "not a port"},
		{"-1", nil, "not a port"},
		{"http", nil, "not a port"},
		{"5432,", nil, "empty port"},
		{",5432", nil, "empty port"},
		{"5432,5432", nil, "given twice"},
		{"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", []uint16{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, ""},
		{"1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", nil, "at most 16"},
	} {
		got, err := parsePorts(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parsePorts(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parsePorts(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestCgroupPathUnder(t *testing.T) {
	for _, tc := range []struct{ arg, want, err string }{
		{"system.slice/nginx.service", "/sys/fs/cgroup/system.slice/nginx.service", ""},
		{"./app/../app", "/sys/fs/cgroup/app", ""},
		{".", "/sys/fs/cgroup", ""},
		{"../etc", "", "leaves"},
		{"a/../../x", "", "leaves"},
	} {
		got, err := cgroupPathUnder("/sys/fs/cgroup", tc.arg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("cgroupPathUnder(%q) = %q, %v; want error %q", tc.arg, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("cgroupPathUnder(%q) = %q, %v; want %q", tc.arg, got, err, tc.want)
		}
	}
}
