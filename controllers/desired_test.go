package controllers

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var testSelector = NamespaceSelector{Key: DefaultNamespaceLabelKey, Value: DefaultNamespaceLabelValue}

func TestPodConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		want    []uint16
		wantErr string
	}{
		{name: "no annotations"},
		{name: "ports", ann: map[string]string{AnnotationExcludePorts: "5432,9300"}, want: []uint16{5432, 9300}},
		{name: "enabled", ann: map[string]string{AnnotationAccelerate: "enabled"}},
		{name: "bad ports names the annotation and value", ann: map[string]string{AnnotationExcludePorts: "5432,,x"},
			wantErr: `invalid annotation sockhop.dev/exclude-ports="5432,,x": entry 2 is empty`},
		{name: "unknown accelerate value", ann: map[string]string{AnnotationAccelerate: "false"},
			wantErr: `invalid annotation sockhop.dev/accelerate="false"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}}
			cfg, err := PodConfig(pod)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("PodConfig = %v, %v; want error containing %q", cfg, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.ExcludePorts, tc.want) {
				t.Errorf("ExcludePorts = %v, want %v", cfg.ExcludePorts, tc.want)
			}
		})
	}
}

func TestWanted(t *testing.T) {
	labelled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{DefaultNamespaceLabelKey: DefaultNamespaceLabelValue}}}
	otherValue := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{DefaultNamespaceLabelKey: "disabled"}}}
	unlabelled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
	pod := func(mod func(p *corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
			Spec:       corev1.PodSpec{NodeName: "node-a"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}
		if mod != nil {
			mod(p)
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		ns      *corev1.Namespace
		want    bool
		whyPart string
	}{
		{name: "labelled namespace", pod: pod(nil), ns: labelled, want: true},
		{name: "pending pod", pod: pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), ns: labelled, want: true},
		{name: "terminating pod keeps running", pod: pod(func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }), ns: labelled, want: true},
		{name: "explicitly enabled", pod: pod(func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationAccelerate: "enabled"} }), ns: labelled, want: true},
		{name: "namespace missing from cache", pod: pod(nil), ns: nil, whyPart: "not labelled sockhop.dev/accelerate=enabled"},
		{name: "unlabelled namespace", pod: pod(nil), ns: unlabelled, whyPart: "not labelled"},
		{name: "label with another value", pod: pod(nil), ns: otherValue, whyPart: "not labelled"},
		{name: "opted out", pod: pod(func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationAccelerate: "disabled"} }), ns: labelled, whyPart: "opted out"},
		{name: "host network", pod: pod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), ns: labelled, whyPart: "host network"},
		{name: "other node", pod: pod(func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }), ns: labelled, whyPart: `node "node-b"`},
		{name: "unscheduled", pod: pod(func(p *corev1.Pod) { p.Spec.NodeName = "" }), ns: labelled, whyPart: `node ""`},
		{name: "succeeded", pod: pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), ns: labelled, whyPart: "terminated (phase Succeeded)"},
		{name: "failed", pod: pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), ns: labelled, whyPart: "terminated (phase Failed)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := Wanted(tc.pod, tc.ns, testSelector, "node-a")
			if got != tc.want {
				t.Fatalf("Wanted = %v (%q), want %v", got, why, tc.want)
			}
			if !got && !strings.Contains(why, tc.whyPart) {
				t.Errorf("why = %q, want it to contain %q", why, tc.whyPart)
			}
			if got && why != "" {
				t.Errorf("why = %q for a wanted pod", why)
			}
		})
	}
}

func TestPodUIDFromCgroup(t *testing.T) {
	const uid = "0f3c1a52-6e1b-4c2d-9a7e-1234567890ab"
	for _, tc := range []struct {
		dir    string
		want   string
		wantOK bool
	}{
		{dir: "/sys/fs/cgroup/unified/kubepods/besteffort/pod" + uid, want: uid, wantOK: true},
		{dir: "/sys/fs/cgroup/kubepods/pod" + uid, want: uid, wantOK: true},
		{dir: "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice", want: uid, wantOK: true},
		{dir: "/sys/fs/cgroup/kubepods.slice/kubepods-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice", want: uid, wantOK: true},
		{dir: "/sys/fs/cgroup/kubepods/pod0123456789abcdef0123456789abcdef", want: "0123456789abcdef0123456789abcdef", wantOK: true},
		{dir: "/sys/fs/cgroup/kubepods/burstable"},
		{dir: "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice"},
		{dir: "/sys/fs/cgroup/kubepods/podnotauid"},
		{dir: "/sys/fs/cgroup/kubepods/xpod" + uid},
		{dir: ""},
	} {
		got, ok := podUIDFromCgroup(tc.dir)
		if ok != tc.wantOK || got != tc.want {
			t.Errorf("podUIDFromCgroup(%q) = %q, %v; want %q, %v", tc.dir, got, ok, tc.want, tc.wantOK)
		}
	}
}

func TestPodIPs(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.2", PodIPs: []corev1.PodIP{{IP: "fd00::2"}, {IP: "10.0.0.2"}, {IP: "garbage"}}}}
	got := podIPs(p)
	if len(got) != 2 || got[0].String() != "10.0.0.2" || got[1].String() != "fd00::2" {
		t.Errorf("podIPs = %v, want [10.0.0.2 fd00::2]", got)
	}
	p = &corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.3"}}
	if got := podIPs(p); len(got) != 1 || got[0].String() != "10.0.0.3" {
		t.Errorf("podIPs from podIP = %v", got)
	}
	if got := podIPs(&corev1.Pod{}); len(got) != 0 {
		t.Errorf("podIPs of a pod without IPs = %v", got)
	}
}

func TestCacheOptions(t *testing.T) {
	if _, err := CacheOptions("", testSelector); err == nil {
		t.Error("empty node accepted")
	}
	if _, err := CacheOptions("n", NamespaceSelector{Key: "bad key!", Value: "x"}); err == nil {
		t.Error("invalid label key accepted")
	}
	opts, err := CacheOptions("node-a", testSelector)
	if err != nil {
		t.Fatal(err)
	}
	for obj, by := range opts.ByObject {
		switch obj.(type) {
		case *corev1.Pod:
			if by.Field == nil || by.Field.String() != "spec.nodeName=node-a" {
				t.Errorf("pod field selector = %v", by.Field)
			}
		case *corev1.Namespace:
			if by.Label == nil || by.Label.String() != "sockhop.dev/accelerate=enabled" {
				t.Errorf("namespace label selector = %v", by.Label)
			}
		}
	}
}
