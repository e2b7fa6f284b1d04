package cgroup

import (
	"strings"
	"testing"
)

func TestPodOf(t *testing.T) {
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
		gotUID, gotQOS, ok := PodOf(tc.path)
		if gotUID != tc.uid || string(gotQOS) != tc.qos || ok != (tc.uid != "") {
			t.Errorf("PodOf(%q) = %q, %q, %v; want %q, %q", tc.path, gotUID, gotQOS, ok, tc.uid, tc.qos)
		}
	}
}
