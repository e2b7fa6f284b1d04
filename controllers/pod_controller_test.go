package controllers

import (
	"context"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"

	"github.com/sockhop/sockhop/pkg/metrics"
)

func TestAccelerateAndOptOut(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	web := n.pod(ns, "web", nil)
	n.mkCgroup(web)
	a := n.startAgent(agentOptions{})

	a.waitAttached(web)
	a.waitEvent(web, corev1.EventTypeNormal, ReasonAccelerated, "attached to cgroup "+n.cgroupDir(web))
	a.waitSynced()
	eventually(t, 5*time.Second, func() (bool, string) {
		return slices.Equal(a.lastIPs(), []string{web.Status.PodIP}), "pod IPs " + strings.Join(a.lastIPs(), ",")
	})

	// Reconciles caused by unrelated changes do not attach or announce
	// again: once the change is in the cache, a reconcile and a
	// convergence of it are done synchronously before the counts are read.
	n.annotate(web, "example.com/unrelated", "1")
	a.reconcileNow(web)
	if err := a.rec.Converge(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := a.events.count(web.UID, ReasonAccelerated); got != 1 {
		t.Errorf("%d Accelerated events for one attach, want 1", got)
	}
	if got := a.metrics.AttachCount(metrics.ResultSuccess); got != 1 {
		t.Errorf("%d attaches, want 1", got)
	}

	n.annotate(web, AnnotationAccelerate, "disabled")
	a.waitDetached(web)
	a.waitEvent(web, corev1.EventTypeNormal, ReasonAccelerationRemoved, "opted out with annotation sockhop.dev/accelerate=disabled")
	eventually(t, 5*time.Second, func() (bool, string) {
		return len(a.lastIPs()) == 0, "pod IPs still " + strings.Join(a.lastIPs(), ",")
	})

	n.annotate(web, AnnotationAccelerate, "")
	a.waitAttached(web)
	eventually(t, 5*time.Second, func() (bool, string) {
		return a.events.count(web.UID, ReasonAccelerated) == 2, "no second Accelerated event after opting back in"
	})
}

func TestNamespaceLabelRemoved(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	p1, p2 := n.pod(ns, "one", nil), n.pod(ns, "two", nil)
	n.mkCgroup(p1)
	n.mkCgroup(p2)
	a := n.startAgent(agentOptions{})
	a.waitAttached(p1)
	a.waitAttached(p2)

	n.setNamespaceLabel(ns, false)
	a.waitDetached(p1)
	a.waitDetached(p2)
	a.waitEvent(p1, corev1.EventTypeNormal, ReasonAccelerationRemoved, "is not labelled sockhop.dev/accelerate=enabled")
	a.waitEvent(p2, corev1.EventTypeNormal, ReasonAccelerationRemoved, "is not labelled")

	n.setNamespaceLabel(ns, true)
	a.waitAttached(p1)
	a.waitAttached(p2)
}

func TestPodDeleted(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	keep, gone, goneNoCgroup := n.pod(ns, "keep", nil), n.pod(ns, "gone", nil), n.pod(ns, "gone-no-cgroup", nil)
	for _, p := range []*corev1.Pod{keep, gone, goneNoCgroup} {
		n.mkCgroup(p)
	}
	a := n.startAgent(agentOptions{})
	for _, p := range []*corev1.Pod{keep, gone, goneNoCgroup} {
		a.waitAttached(p)
	}

	n.deletePod(gone)
	a.waitDetached(gone)
	// kubelet removes the cgroup before the pod object goes away.
	n.rmCgroup(goneNoCgroup)
	n.deletePod(goneNoCgroup)
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, at := range a.attachments() {
			if strings.HasSuffix(at.CgroupPath, string(goneNoCgroup.UID)) {
				return false, "deleted pod without cgroup still attached"
			}
		}
		return true, ""
	})
	if !a.attached(keep) {
		t.Error("the remaining pod was detached")
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		return slices.Equal(a.lastIPs(), []string{keep.Status.PodIP}), "pod IPs " + strings.Join(a.lastIPs(), ",")
	})

	// A pod recreated under the same name is a new pod with a new cgroup.
	again := n.pod(ns, "gone", nil)
	n.mkCgroup(again)
	a.waitAttached(again)
}

func TestMalformedAnnotations(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	bad := map[string]string{
		"abc":     `invalid annotation sockhop.dev/exclude-ports="abc": entry 1 ("abc") is not a port number`,
		"70000":   `invalid annotation sockhop.dev/exclude-ports="70000": port 70000 is out of range 1-65535`,
		"5432,,x": `invalid annotation sockhop.dev/exclude-ports="5432,,x": entry 2 is empty`,
	}
	var badPods []*corev1.Pod
	i := 0
	for value := range bad {
		i++
		p := n.pod(ns, "bad-"+string(rune('a'+i)), func(p *corev1.Pod) {
			p.Annotations = map[string]string{AnnotationExcludePorts: value}
		})
		n.mkCgroup(p)
		badPods = append(badPods, p)
	}
	good := n.pod(ns, "good", func(p *corev1.Pod) {
		p.Annotations = map[string]string{AnnotationExcludePorts: "9300, 5432"}
	})
	n.mkCgroup(good)
	a := n.startAgent(agentOptions{})

	a.waitAttached(good)
	if got := a.attachments()[n.cgroupDir(good)].Config.ExcludePorts; !slices.Equal(got, []uint16{5432, 9300}) {
		t.Errorf("excluded ports in the datapath = %v, want [5432 9300]", got)
	}
	a.waitEvent(good, corev1.EventTypeNormal, ReasonAccelerated, "connections on ports [5432 9300] stay on TCP")
	for _, p := range badPods {
		a.waitEvent(p, corev1.EventTypeWarning, ReasonAccelerationFailed, bad[p.Annotations[AnnotationExcludePorts]])
	}
	a.waitSynced()
	if err := a.rec.Converge(context.Background()); err != nil {
		t.Logf("convergence reports the bad pods: %v", err)
	}
	for _, p := range badPods {
		if a.attached(p) {
			t.Errorf("pod with exclude-ports %q was attached", p.Annotations[AnnotationExcludePorts])
		}
		if got := a.events.count(p.UID, ReasonAccelerationFailed); got != 1 {
			t.Errorf("pod with exclude-ports %q: %d AccelerationFailed events, want 1 (no spam)", p.Annotations[AnnotationExcludePorts], got)
		}
	}

	// Fixing the annotation accelerates the pod; breaking an accelerated
	// pod's annotation puts it back on TCP.
	n.annotate(badPods[0], AnnotationExcludePorts, "8080")
	a.waitAttached(badPods[0])
	n.annotate(good, AnnotationExcludePorts, "x")
	a.waitDetached(good)
	a.waitEvent(good, corev1.EventTypeWarning, ReasonAccelerationFailed, `invalid annotation sockhop.dev/exclude-ports="x"`)
}

func TestCgroupAppearsLate(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	soon, late := n.pod(ns, "soon", nil), n.pod(ns, "late", nil)
	a := n.startAgent(agentOptions{cgroupWait: 2 * time.Second})
	a.waitSynced()

	// The first convergence looked at both pods; a reconcile now finds no
	// cgroup and says it will look again.
	for _, p := range []*corev1.Pod{soon, late} {
		if res := a.reconcileNow(p); res.RequeueAfter <= 0 {
			t.Errorf("pod %s without a cgroup: reconcile %+v, want a requeue to look again", p.Name, res)
		}
	}
	if a.attached(soon) || a.attached(late) {
		t.Fatal("attached without a cgroup")
	}
	start := time.Now()
	n.mkCgroup(soon)
	a.waitAttached(soon)
	t.Logf("cgroup created → attached: %s", time.Since(start))

	a.waitEvent(late, corev1.EventTypeWarning, ReasonAccelerationFailed, "cgroup did not appear within 2s")
	if got := a.events.count(soon.UID, ReasonAccelerationFailed); got != 0 {
		t.Errorf("%d AccelerationFailed events for a pod whose cgroup came in time", got)
	}
	n.mkCgroup(late)
	a.waitAttached(late)
	a.waitEvent(late, corev1.EventTypeNormal, ReasonAccelerated, "attached")
	if got := a.events.count(late.UID, ReasonAccelerationFailed); got != 1 {
		t.Errorf("%d AccelerationFailed events for the late cgroup, want 1", got)
	}
}

func TestHostNetworkNeverAttached(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	host := n.pod(ns, "host", func(p *corev1.Pod) { p.Spec.HostNetwork = true })
	n.mkCgroup(host)
	plain := n.pod(ns, "plain", nil)
	n.mkCgroup(plain)
	other := n.namespace(false)
	unlabelled := n.pod(other, "unlabelled", nil)
	n.mkCgroup(unlabelled)

	a := n.startAgent(agentOptions{})
	a.waitAttached(plain)
	a.waitSynced()
	if err := a.rec.Converge(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.attached(host) {
		t.Error("hostNetwork pod attached")
	}
	if a.attached(unlabelled) {
		t.Error("pod of an unlabelled namespace attached")
	}
	if got := a.events.count(host.UID, ReasonAccelerated); got != 0 {
		t.Errorf("%d Accelerated events for the hostNetwork pod", got)
	}
	if ips := a.lastIPs(); slices.Contains(ips, host.Status.PodIP) {
		t.Errorf("host IP among the accelerated pod IPs %v", ips)
	}
}

// TestRestartConvergence stops the agent with 50 pods attached, deletes 5
// pods while no agent runs, and starts a new agent on the same pins.
func TestRestartConvergence(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	var pods []*corev1.Pod
	for i := range 50 {
		p := n.pod(ns, "pod-"+string(rune('a'+i/26))+string(rune('a'+i%26)), nil)
		n.mkCgroup(p)
		pods = append(pods, p)
	}
	a1 := n.startAgent(agentOptions{})
	for _, p := range pods {
		a1.waitAttached(p)
	}
	a1.waitSynced()
	before := a1.attachments()
	if len(before) != 50 {
		t.Fatalf("%d attachments, want 50", len(before))
	}
	a1.stop()

	deleted, kept := pods[:5], pods[5:]
	for i, p := range deleted {
		n.deletePod(p)
		if i < 2 {
			n.rmCgroup(p) // kubelet got to it too
		}
	}

	start := time.Now()
	a2 := n.startAgent(agentOptions{})
	a2.waitSynced()
	converged := time.Since(start)
	after := a2.attachments()
	for _, p := range kept {
		dir := n.cgroupDir(p)
		got, ok := after[dir]
		if !ok {
			t.Errorf("pod %s lost its attachment", p.Name)
			continue
		}
		if got.CgroupID != before[dir].CgroupID {
			t.Errorf("pod %s: cgroup id %d, was %d", p.Name, got.CgroupID, before[dir].CgroupID)
		}
	}
	for _, p := range deleted {
		if _, ok := after[n.cgroupDir(p)]; ok {
			t.Errorf("deleted pod %s still attached", p.Name)
		}
	}
	if len(after) != 45 {
		t.Errorf("%d attachments after restart, want 45", len(after))
	}
	if got := a2.metrics.AttachCount(metrics.ResultSuccess) + a2.metrics.AttachCount(metrics.ResultFailure); got != 0 {
		t.Errorf("the restarted agent attached %d times, want 0", got)
	}
	for _, p := range kept {
		if got := a2.events.count(p.UID, ReasonAccelerated); got != 0 {
			t.Errorf("pod %s announced as Accelerated again after restart", p.Name)
		}
	}
	var want []string
	for _, p := range kept {
		want = append(want, p.Status.PodIP)
	}
	sort.Strings(want)
	got := a2.lastIPs()
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("pod IPs after restart: %d, want the %d of the kept pods", len(got), len(want))
	}
	t.Logf("restart convergence with 50 pods (5 deleted while down): %s", converged)
}

// TestAttachLatencyCountsFromWanted: a pod whose cgroup appeared while its
// namespace was not labelled is attached when the label comes; the attach
// latency counts from then, not from the cgroup's creation.
func TestAttachLatencyCountsFromWanted(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(false)
	p := n.pod(ns, "labelled-later", nil)
	a := n.startAgent(agentOptions{})
	reg := prometheus.NewRegistry()
	if err := a.metrics.Register(reg); err != nil {
		t.Fatal(err)
	}
	a.waitSynced()
	n.mkCgroup(p)
	// As if the cgroup watcher had seen the cgroup two seconds ago.
	a.rec.mu.Lock()
	a.rec.seen[string(p.UID)] = time.Now().Add(-2 * time.Second)
	a.rec.mu.Unlock()
	a.reconcileNow(p) // not wanted: the namespace is not labelled
	if a.attached(p) {
		t.Fatal("attached in an unlabelled namespace")
	}

	n.setNamespaceLabel(ns, true)
	a.waitAttached(p)
	// The reconciler observes the latency once Attach has returned,
	// a moment after the attachment is visible.
	deadline := time.Now().Add(10 * time.Second)
	for {
		h := attachLatency(t, reg)
		if h != nil && h.GetSampleCount() > 0 {
			if h.GetSampleCount() != 1 || h.GetSampleSum() >= 1 {
				t.Fatalf("attach latency: %d observations summing to %.3fs, want one under 1s (the time since the label came)", h.GetSampleCount(), h.GetSampleSum())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sockhop_attach_latency_seconds observation 10s after the attach: %v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func attachLatency(t *testing.T, reg *prometheus.Registry) *dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "sockhop_attach_latency_seconds" && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	return nil
}
