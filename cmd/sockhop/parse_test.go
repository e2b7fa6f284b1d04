package main

import (
	"strings"
	"testing"
)

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
