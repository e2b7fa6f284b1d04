package e2e

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestSoak is the fault-injection soak: for SOCKHOP_SOAK (a duration, e.g.
// 10m; `make soak`), pods are created and deleted at a steady rate in a
// labelled namespace, the agent is SIGKILLed or its pod deleted at random,
// the label is toggled, and a helm upgrade comes in the middle, while
// checked streams run through both sidecars of the mesh workload. It
// reports connections, bytes verified, resets, lost bytes, agent restarts
// and the attach latency p99, and fails on any lost byte, reset or error.
// Without SOCKHOP_SOAK it is skipped; e2e/run.sh sets a short one.
func TestSoak(t *testing.T) {
	c := connect(t)
	d, err := time.ParseDuration(os.Getenv("SOCKHOP_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("soak: set SOCKHOP_SOAK to a duration (make soak runs 10m)")
	}
	helm(t, installArgs()...)
	t.Cleanup(func() { helm(t, "uninstall", release, "-n", sockhopNS, "--wait", "--timeout", "2m") })
	c.agentPod(t)

	const ns = "sockhop-soak"
	c.namespace(t, ns, true)
	server := c.meshPod(t, ns, "server", nil)
	client := c.meshPod(t, ns, "client", nil)
	if !c.accelerated(server, time.Minute) || !c.accelerated(client, time.Minute) {
		t.Fatal("the soak's server and client were not accelerated")
	}

	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	var rep soakReport
	wg.Add(2)
	go func() { defer wg.Done(); rep.streams(ctx, c, client, server) }()
	go func() { defer wg.Done(); rep.churn(ctx, c, ns) }()

	// Faults, in the test's goroutine: every 5-20 s one of them, and one
	// helm upgrade half way.
	hist := attachHistogram{}
	upgraded := false
	half := time.Now().Add(d / 2)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(5+rand.IntN(15)) * time.Second):
		}
		if ctx.Err() != nil {
			break
		}
		old := c.agentPod(t)
		switch {
		case !upgraded && time.Now().After(half):
			upgraded = true
			hist.add(t, old) // its histogram goes with it
			// A value that changes the pod template (the default is info),
			// so that the upgrade rolls the agent.
			t.Logf("soak: helm upgrade --set logLevel=debug")
			helm(t, installArgs("--set", "logLevel=debug")...)
			c.waitNewAgent(t, string(old.UID))
			rep.restarts++
		default:
			switch rand.IntN(3) {
			case 0:
				hist.add(t, old)
				pid := agentPID(t)
				t.Logf("soak: SIGKILL sockhop-agent pid %d", pid)
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatalf("kill agent pid %d: %v", pid, err)
				}
				c.waitAgentRestarted(t, old.Name, old.Status.ContainerStatuses[0].RestartCount)
				rep.restarts++
			case 1:
				hist.add(t, old)
				t.Logf("soak: delete agent pod %s", old.Name)
				if err := c.cs.CoreV1().Pods(sockhopNS).Delete(context.Background(), old.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				c.waitNewAgent(t, string(old.UID))
				rep.restarts++
			case 2:
				t.Logf("soak: label off for 5 s")
				c.setLabel(t, ns, "")
				time.Sleep(5 * time.Second)
				c.setLabel(t, ns, accelValue)
				rep.toggles++
			}
		}
	}
	wg.Wait()
	hist.add(t, c.agentPod(t))

	// After all that, new connections are accelerated again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		before := c.status(t)
		res, err := c.stream(context.Background(), client, server, 2, transferBytes, 0)
		if err != nil {
			t.Fatal(err)
		}
		checkIntact(t, "streams after the soak", res, 2, transferBytes)
		if c.status(t).counter(t, "redirectedbytes") > before.counter(t, "redirectedbytes") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("30 s after the soak, new connections are not accelerated")
		}
		time.Sleep(2 * time.Second)
	}

	rep.mu.Lock()
	defer rep.mu.Unlock()
	summary := fmt.Sprintf("SOAK %s: %d stream rounds, %d connections, %d bytes verified, %d resets, %d lost bytes, %d errors; "+
		"%d pods created, %d deleted; %d agent restarts (kills, pod deletions, upgrade), %d label toggles; attach latency p99 %s (%d attaches)",
		d, rep.rounds, rep.conns, rep.verified, rep.resets, rep.lost, len(rep.errors),
		rep.created, rep.deleted, rep.restarts, rep.toggles, hist.quantile(0.99), hist.total())
	t.Log(summary)
	fmt.Println(summary)
	if rep.lost != 0 || rep.resets != 0 || len(rep.errors) > 0 {
		t.Errorf("the soak lost %d bytes, had %d resets and %d errors: %v", rep.lost, rep.resets, len(rep.errors), rep.errors)
	}
	if rep.rounds == 0 || rep.created == 0 {
		t.Errorf("the soak ran %d stream rounds and created %d pods: it tested nothing", rep.rounds, rep.created)
	}
}

type soakReport struct {
	mu                                      sync.Mutex
	rounds, conns, resets, created, deleted int
	restarts, toggles                       int
	verified, lost                          int64
	errors                                  []string
}

// streams runs rounds of paced, checked streams through both sidecars
// until ctx is done. Each round outlives a fault or two.
func (r *soakReport) streams(ctx context.Context, c *cluster, client, server *corev1.Pod) {
	const (
		conns = 8
		bytes = 2 << 20
		rate  = 512 << 10 // 4 s per round
	)
	for ctx.Err() == nil {
		res, err := c.stream(context.Background(), client, server, conns, bytes, rate)
		r.mu.Lock()
		r.rounds++
		r.conns += res.Conns
		r.verified += res.BytesVerified
		r.resets += res.Resets
		r.lost += int64(conns)*bytes - res.BytesVerified
		r.errors = append(r.errors, res.Errors...)
		if err != nil {
			r.errors = append(r.errors, err.Error())
		}
		r.mu.Unlock()
	}
}

// churn creates a pod every 2 s and deletes each about 10 s later.
func (r *soakReport) churn(ctx context.Context, c *cluster, ns string) {
	type made struct {
		name string
		at   time.Time
	}
	var live []made
	del := func(name string) {
		err := c.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		r.mu.Lock()
		if err != nil {
			r.errors = append(r.errors, fmt.Sprintf("delete churn pod %s: %v", name, err))
		} else {
			r.deleted++
		}
		r.mu.Unlock()
	}
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("churn-%d", i)
		_, err := c.cs.CoreV1().Pods(ns).Create(context.Background(), meshPodSpec(ns, name, nil), metav1.CreateOptions{})
		r.mu.Lock()
		if err != nil {
			r.errors = append(r.errors, fmt.Sprintf("create churn pod %s: %v", name, err))
		} else {
			r.created++
			live = append(live, made{name, time.Now()})
		}
		r.mu.Unlock()
		for len(live) > 0 && time.Since(live[0].at) > 10*time.Second {
			del(live[0].name)
			live = live[1:]
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	for _, m := range live {
		del(m.name)
	}
}

// attachHistogram adds up sockhop_attach_latency_seconds over the agents
// of the soak (each restart starts a new one).
type attachHistogram map[float64]float64 // le → cumulative count

// add scrapes the agent pod's /metrics; an agent that cannot be scraped
// adds nothing.
func (h attachHistogram) add(t *testing.T, agent *corev1.Pod) {
	resp, err := http.Get(fmt.Sprintf("http://%s:9962/metrics", agent.Status.PodIP))
	if err != nil {
		t.Logf("soak: scrape agent %s: %v", agent.Name, err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `sockhop_attach_latency_seconds_bucket{le="`)
		if !ok {
			continue
		}
		leStr, countStr, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		le, err1 := strconv.ParseFloat(leStr, 64)
		n, err2 := strconv.ParseFloat(countStr, 64)
		if err1 == nil && err2 == nil {
			h[le] += n
		}
	}
}

func (h attachHistogram) total() int { return int(h[math.Inf(1)]) }

// quantile is the upper bound of the bucket holding the q-quantile.
func (h attachHistogram) quantile(q float64) string {
	les := make([]float64, 0, len(h))
	for le := range h {
		les = append(les, le)
	}
	sort.Float64s(les)
	total := h[math.Inf(1)]
	if total == 0 {
		return "n/a"
	}
	for _, le := range les {
		if h[le] >= q*total {
			if math.IsInf(le, 1) {
				return "> " + time.Duration(les[len(les)-2]*float64(time.Second)).String()
			}
			return "≤ " + time.Duration(le*float64(time.Second)).String()
		}
	}
	return "n/a"
}
