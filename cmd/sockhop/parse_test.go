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

func TestPodFromCgroup(t *testing.T) {
	const uid = "8b4c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3"
	const static = "0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		path, uid, qos string
	}{
		// cgroupfs driver, hybrid host, custom cgroup root.
		{"/sys/fs/cgroup/unified/sockhop-e2e/kubepods/besteffort/pod" + uid, uid, "BestEffort"},
		{"/sys/fs/cgroup/kubepods/burstable/pod" + uid, uid, "Burstable"},
		{"/sys/fs/cgroup/kubepods/pod" + uid, uid, "Guaranteed"},
		// A container directory below the pod: the pod still counts.
		{"/sys/fs/cgroup/kubepods/burstable/pod" + uid + "/4f1e2d3c4b5a", uid, "Burstable"},
		{"/sys/fs/cgroup/kubepods/besteffort/pod" + static, static, "BestEffort"},
		// systemd driver.
		{"/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" +
			strings.ReplaceAll(uid, "-", "_") + ".slice", uid, "Burstable"},
		{"/sys/fs/cgroup/kubepods.slice/kubepods-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-abc.scope", uid, "Guaranteed"},
		{"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + static + ".slice", static, "BestEffort"},
		{"/sys/fs/cgroup/custom.slice/custom-kubepods.slice/custom-kubepods-besteffort.slice/custom-kubepods-besteffort-pod" +
			strings.ReplaceAll(uid, "-", "_") + ".slice", uid, "BestEffort"},
		// Not pods.
		{"/sys/fs/cgroup/system.slice/nginx.service", "", ""},
		{"/sys/fs/cgroup/unified/sockhop-test-1234/app", "", ""},
		{"/sys/fs/cgroup/kubepods/burstable/podnot-a-uid", "", ""},
		{"/sys/fs/cgroup/kubepods/burstable/pod" + uid[:35], "", ""},
		{"/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice", "", ""},
		{"", "", ""},
	} {
		gotUID, gotQOS := podFromCgroup(tc.path)
		if gotUID != tc.uid || gotQOS != tc.qos {
			t.Errorf("podFromCgroup(%q) = %q, %q; want %q, %q", tc.path, gotUID, gotQOS, tc.uid, tc.qos)
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
