// Package e2e holds sockhop's real-cluster tests. They run against the single-node
// cluster of e2e/cluster (e2e/run.sh builds, starts, tests and tears down), skip
// unless SOCKHOP_E2E=1, and fail when SOCKHOP_E2E=1 but the cluster is unreachable.
package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// Bytes each way per connection of a checked transfer: below the datapath's
	// back-pressure bound (3 MiB), so that no direction falls back to TCP
	// because a proxy read more slowly than its peer wrote.
	transferBytes = 1 << 20
	// Streams that stay open while the agent restarts, upgrades or goes away:
	// paced so that they outlive what the test does meanwhile.
	liveConns = 50
	liveBytes = 3 << 20
	liveRate  = 128 << 10
	// Connections of the first checked transfer.
	conns4 = 4
)

// TestE2E runs the scenarios in order on one installation: later ones build on the
// agent installed by the first and the last one uninstalls it.
func TestE2E(t *testing.T) {
	c := connect(t)

	t.Run("helm install: agent Ready", func(t *testing.T) {
		helm(t, installArgs()...)
		p := c.agentPod(t)
		t.Logf("agent %s Ready on %s", p.Name, p.Spec.NodeName)
	})
	if t.Failed() {
		t.FailNow()
	}

	const ns = "sockhop-e2e-mesh"
	c.namespace(t, ns, true)
	server := c.meshPod(t, ns, "server", nil)
	client := c.meshPod(t, ns, "client", nil)

	t.Run("labelled namespace: Accelerated events, hops into proxies redirected, intact", func(t *testing.T) {
		for _, p := range []string{"server", "client"} {
			pod := server
			if p == "client" {
				pod = client
			}
			if !c.accelerated(pod, time.Minute) {
				t.Fatalf("no Accelerated event for %s/%s", ns, pod.Name)
			}
		}
		before := c.status(t)
		for _, p := range []string{string(server.UID), string(client.UID)} {
			if !before.lists(p) {
				t.Errorf("sockhop status does not list pod %s:\n%s", p, before.raw)
			}
		}
		const conns = conns4
		res, err := c.stream(context.Background(), client, server, conns, transferBytes, 0)
		if err != nil {
			t.Fatal(err)
		}
		checkIntact(t, "streams through client sidecar, server sidecar", res, conns, transferBytes)
		after := c.status(t)
		got := after.counter(t, "redirectedbytes") - before.counter(t, "redirectedbytes")
		// The pods' first connections: every direction starts on TCP
		// until its receiver has read it all (bulk streams rarely pause).
		wantRedirected(t, "streams through both sidecars", got, res.BytesSent+res.BytesVerified, 0.5)

		// Per pod: the status counts the connections each pod paired and
		// the directions redirected, and the agent says so in a summary
		// Event (within its 10 s period once a direction was redirected).
		for _, pod := range []*corev1.Pod{server, client} {
			st := after.podStats(string(pod.UID))
			conns, _ := st["connections"].(float64)
			dirs, _ := st["directions"].(float64)
			redirected, _ := st["redirected"].(float64)
			t.Logf("pod %s: %v", pod.Name, st)
			if conns < conns4 || redirected == 0 || redirected > dirs {
				t.Errorf("sockhop status for pod %s: want at least %d connections paired and some of their directions redirected: %v", pod.Name, conns4, st)
			}
			reason, note := c.summary(pod, 2*time.Minute)
			t.Logf("pod %s: %s: %s", pod.Name, reason, note)
			if reason != "Accelerating" || !strings.Contains(note, " directions redirected") || strings.Contains(note, " 0 of ") {
				t.Errorf("pod %s: want an Accelerating summary Event saying directions were redirected, got %q: %q", pod.Name, reason, note)
			}
		}
	})

	t.Run("kubectl sockhop: status and sysdump of the cluster, with the documented RBAC", func(t *testing.T) {
		c.checkKubectlSockhop(t, ns, server, client)
	})

	t.Run("Prometheus scrapes the agent as the PodMonitor says: README metrics, dashboard and alerts", func(t *testing.T) {
		c.checkPrometheus(t, server.Spec.NodeName)
	})

	t.Run("unlabelled namespace: untouched", func(t *testing.T) {
		const plain = "sockhop-e2e-plain"
		c.namespace(t, plain, false)
		ps := c.meshPod(t, plain, "server", nil)
		pc := c.meshPod(t, plain, "client", nil)
		c.checkNotAccelerated(t, ps, pc)
	})

	t.Run("opt-out annotation: untouched", func(t *testing.T) {
		off := map[string]string{accelKey: "disabled"}
		ps := c.meshPod(t, ns, "server-optout", off)
		pc := c.meshPod(t, ns, "client-optout", off)
		c.checkNotAccelerated(t, ps, pc)
	})

	t.Run("deleting a pod leaves nothing of it", func(t *testing.T) {
		p := c.meshPod(t, ns, "client-doomed", nil)
		if !c.accelerated(p, time.Minute) {
			t.Fatalf("no Accelerated event for %s", p.Name)
		}
		if err := c.cs.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for {
			s := c.status(t)
			if !s.lists(string(p.UID)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a minute after deleting pod %s, sockhop status still lists it:\n%s", p.UID, s.raw)
			}
			time.Sleep(time.Second)
		}
	})

	// underLoad starts liveConns paced streams, does something to the agent, and
	// checks that every stream completed intact and that new connections are
	// accelerated again.
	underLoad := func(t *testing.T, do func(t *testing.T), newAccelerated bool) {
		done := c.streamInBackground(client, server, liveConns, liveBytes, liveRate)
		time.Sleep(3 * time.Second) // let every stream get going
		do(t)
		res, err := done()
		if err != nil {
			t.Fatal(err)
		}
		checkIntact(t, "live streams", res, liveConns, liveBytes)
		if newAccelerated {
			before := c.status(t)
			res, err := c.stream(context.Background(), client, server, 2, transferBytes, 0)
			if err != nil {
				t.Fatal(err)
			}
			checkIntact(t, "new streams", res, 2, transferBytes)
			got := c.status(t).counter(t, "redirectedbytes") - before.counter(t, "redirectedbytes")
			// The pods have run connections read safely all their life:
			// their containers are trusted (learnt in pinned maps, so
			// across agent restarts and upgrades), and new connections
			// are redirected from their first byte on all three hops,
			// until back-pressure sends a bulk direction to TCP (these
			// streams' small writes trip the small-message bound, after
			// 0.86–3.0 per byte moved across runs on a 2-vCPU VM): at
			// least half a hop's worth, as for the first streams.
			wantRedirected(t, "new connections", got, res.BytesSent+res.BytesVerified, 0.5)
		}
	}

	t.Run("agent pod deleted under load", func(t *testing.T) {
		underLoad(t, func(t *testing.T) {
			old := c.agentPod(t)
			if err := c.cs.CoreV1().Pods(sockhopNS).Delete(context.Background(), old.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			c.waitNewAgent(t, string(old.UID))
		}, true)
	})

	t.Run("agent SIGKILLed under load", func(t *testing.T) {
		underLoad(t, func(t *testing.T) {
			old := c.agentPod(t)
			pid := agentPID(t)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatalf("kill agent pid %d: %v", pid, err)
			}
			t.Logf("SIGKILLed sockhop-agent pid %d", pid)
			c.waitAgentRestarted(t, old.Name, old.Status.ContainerStatuses[0].RestartCount)
		}, true)
	})

	t.Run("helm upgrade with a changed value under load", func(t *testing.T) {
		underLoad(t, func(t *testing.T) {
			old := c.agentPod(t)
			helm(t, installArgs("--set", "logLevel=debug")...)
			c.waitNewAgent(t, string(old.UID))
		}, true)
	})

	t.Run("DaemonSet deleted and re-created under load: the new agent keeps the datapath", func(t *testing.T) {
		// What kubectl replace --force, a GitOps replace or a release
		// re-install does: the old agent sees its DaemonSet deleted, then
		// a new one of the same name; it must leave the pins to the new
		// agent, which waits for the node lock until the old one is gone.
		underLoad(t, func(t *testing.T) {
			old := c.agentPod(t)
			c.replaceDaemonSet(t)
			c.waitNewAgent(t, string(old.UID))
			if _, err := os.Stat("/sys/fs/bpf/sockhop/links/sk_msg"); err != nil {
				t.Fatalf("the datapath is gone after the DaemonSet was replaced: %v", err)
			}
		}, true)
	})

	t.Run("removing the label stops acceleration of new connections", func(t *testing.T) {
		c.setLabel(t, ns, "")
		defer c.setLabel(t, ns, accelValue)
		// The agent detaches asynchronously: allow it a few seconds.
		deadline := time.Now().Add(30 * time.Second)
		for {
			before := c.status(t)
			res, err := c.stream(context.Background(), client, server, 2, transferBytes, 0)
			if err != nil {
				t.Fatal(err)
			}
			checkIntact(t, "streams after removing the label", res, 2, transferBytes)
			got := c.status(t).counter(t, "redirectedbytes") - before.counter(t, "redirectedbytes")
			if got == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("30 s after removing the label, new connections still redirect %.0f bytes", got)
			}
			time.Sleep(2 * time.Second)
		}
	})

	t.Run("helm uninstall: no pins left, live connections keep working", func(t *testing.T) {
		// The label is back: wait until new connections are accelerated again, so
		// that the live streams below ride the datapath that uninstall removes.
		deadline := time.Now().Add(30 * time.Second)
		for {
			before := c.status(t)
			res, err := c.stream(context.Background(), client, server, 1, 1<<20, 0)
			if err != nil {
				t.Fatal(err)
			}
			if c.status(t).counter(t, "redirectedbytes") > before.counter(t, "redirectedbytes") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("30 s after labelling %s again, new connections are not accelerated (%d bytes moved)", ns, res.BytesSent)
			}
			time.Sleep(2 * time.Second)
		}
		underLoad(t, func(t *testing.T) {
			helm(t, "uninstall", release, "-n", sockhopNS, "--wait", "--timeout", "2m")
		}, false)
		entries, err := os.ReadDir("/sys/fs/bpf/sockhop")
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if len(entries) > 0 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("pins left under /sys/fs/bpf/sockhop after helm uninstall: %v", names)
		}
	})
}

// replaceDaemonSet deletes the agent's DaemonSet and creates it again with
// the same name and spec (a new UID), as kubectl replace --force does.
func (c *cluster) replaceDaemonSet(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	dss := c.cs.AppsV1().DaemonSets(sockhopNS)
	ds, err := dss.Get(ctx, release, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	background := metav1.DeletePropagationBackground
	if err := dss.Delete(ctx, release, metav1.DeleteOptions{PropagationPolicy: &background}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if _, err := dss.Get(ctx, release, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the DaemonSet is not gone a minute after its deletion")
		}
	}
	annotations := map[string]string{}
	for k, v := range ds.Annotations {
		if k != "deprecated.daemonset.template.generation" {
			annotations[k] = v
		}
	}
	fresh := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: ds.Name, Namespace: ds.Namespace, Labels: ds.Labels, Annotations: annotations},
		Spec:       ds.Spec,
	}
	created, err := dss.Create(ctx, fresh, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("DaemonSet %s re-created: uid %s → %s", release, ds.UID, created.UID)
}

// checkNotAccelerated checks that a pair of pods gets no Accelerated event, is not
// listed by sockhop status, and that transfers between them redirect nothing.
func (c *cluster) checkNotAccelerated(t *testing.T, server, client *corev1.Pod) {
	t.Helper()
	before := c.status(t)
	res, err := c.stream(context.Background(), client, server, 2, transferBytes, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkIntact(t, "streams between pods that are not accelerated", res, 2, transferBytes)
	after := c.status(t)
	if got := after.counter(t, "redirectedbytes") - before.counter(t, "redirectedbytes"); got != 0 {
		t.Errorf("redirected bytes grew by %.0f between pods that are not accelerated", got)
	}
	for _, p := range []*corev1.Pod{server, client} {
		if after.lists(string(p.UID)) {
			t.Errorf("sockhop status lists pod %s/%s (%s)", p.Namespace, p.Name, p.UID)
		}
		if c.accelerated(p, 2*time.Second) {
			t.Errorf("pod %s/%s has an Accelerated event", p.Namespace, p.Name)
		}
	}
}

// waitNewAgent waits for a Ready agent pod other than the one with this UID.
func (c *cluster) waitNewAgent(t *testing.T, oldUID string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if p := c.agentPod(t); string(p.UID) != oldUID {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no new agent pod Ready after 2 minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitAgentRestarted waits until the agent container of the pod restarted and is Ready.
func (c *cluster) waitAgentRestarted(t *testing.T, pod string, restarts int32) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := c.cs.CoreV1().Pods(sockhopNS).Get(context.Background(), pod, metav1.GetOptions{})
		if err == nil && podReady(p) && len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].RestartCount > restarts {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("agent container not restarted and Ready after 2 minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// agentPID finds the sockhop-agent process on this node (the test runs on the
// node, in the cluster's namespaces, sharing the host's PID namespace).
func agentPID(t *testing.T) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	var found []int
	for _, exe := range procs {
		target, err := os.Readlink(exe)
		if err != nil || filepath.Base(target) != "sockhop-agent" {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(exe))); err == nil {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one sockhop-agent process on the node, found %v", found)
	}
	return found[0]
}

// wantRedirected checks the node-wide redirected bytes after a transfer
// through the mesh path client app → client sidecar → server sidecar →
// server app and back: three hops each way, each of which may be
// redirected (at most 3 per byte moved); at least perByte per byte moved
// must have been.
func wantRedirected(t *testing.T, what string, got float64, moved int64, perByte float64) {
	t.Helper()
	want := perByte * float64(moved)
	t.Logf("%s: moved %d bytes; redirected bytes grew by %.0f (%.2f per byte moved)", what, moved, got, got/float64(moved))
	if got < want {
		t.Errorf("%s: redirected bytes grew by %.0f, want at least %.0f (%.1f per byte moved)", what, got, want, perByte)
	}
}
