package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// The cluster under test: what e2e/cluster/up.sh and e2e/images.sh set up.
const (
	sockhopNS      = "sockhop-system"
	release        = "sockhop"
	agentContainer = "sockhop-agent"
	workloadImage  = "sockhop/mesh-workload:e2e"
	accelKey       = "sockhop.dev/accelerate"
	accelValue     = "enabled"
	serverSeed     = 42
)

// cluster is a connection to the e2e cluster.
type cluster struct {
	cs  *kubernetes.Clientset
	cfg *rest.Config
}

// connect skips the test unless SOCKHOP_E2E=1, and fails it when the cluster that
// SOCKHOP_E2E=1 promises is not reachable.
func connect(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv("SOCKHOP_E2E") != "1" {
		t.Skip("real-cluster test: set SOCKHOP_E2E=1 and run inside the cluster's namespace (e2e/run.sh, or e2e/cluster/exec.sh go test ./e2e/...)")
	}
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		t.Fatal("SOCKHOP_E2E=1 but KUBECONFIG is not set (run through e2e/cluster/exec.sh)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", kc, err)
	}
	cfg.Timeout = 30 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client for %s: %v", kc, err)
	}
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		t.Fatalf("SOCKHOP_E2E=1 but the cluster is not reachable: %v", err)
	}
	return &cluster{cs: cs, cfg: cfg}
}

// helm runs the helm binary (on PATH inside the cluster's namespace).
func helm(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("helm", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// installArgs are the arguments of helm upgrade --install for the e2e node.
func installArgs(extra ...string) []string {
	root := os.Getenv("SOCKHOP_E2E_CGROUP_ROOT")
	if root == "" {
		root = "sockhop-e2e"
	}
	chart, _ := filepath.Abs("../charts/sockhop")
	return append([]string{"upgrade", "--install", release, chart, "-n", sockhopNS, "--create-namespace",
		"--wait", "--timeout", "3m", "--set", "image.pullPolicy=Never",
		"--set", "cgroup.driver=cgroupfs", "--set", "cgroup.root=/" + root}, extra...)
}

// agentPod returns the Ready agent pod, waiting up to two minutes for one.
func (c *cluster) agentPod(t *testing.T) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.cs.CoreV1().Pods(sockhopNS).List(ctx, metav1.ListOptions{
			LabelSelector: labels.Set{"app.kubernetes.io/name": "sockhop"}.String()})
		if err != nil {
			return false, nil
		}
		for i := range pods.Items {
			if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
				pod = p
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no Ready agent pod in %s: %v", sockhopNS, err)
	}
	return pod
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// exec runs a command in a container and returns its stdout. It runs kubectl exec
// (on PATH inside the cluster's namespace) rather than client-go's remotecommand,
// whose websocket dependencies the module does not otherwise need.
func (c *cluster) exec(ctx context.Context, ns, pod, container string, cmd ...string) (string, error) {
	args := append([]string{"-n", ns, "exec", pod, "-c", container, "--"}, cmd...)
	var stdout, stderr bytes.Buffer
	kc := exec.CommandContext(ctx, "kubectl", args...)
	kc.Stdout, kc.Stderr = &stdout, &stderr
	if err := kc.Run(); err != nil {
		return stdout.String(), fmt.Errorf("exec %v in %s/%s: %w (stderr: %s)", cmd, ns, pod, err, stderr.String())
	}
	return stdout.String(), nil
}

// status is `sockhop status -o json` in the agent pod, decoded loosely (the test
// looks for counters and pod UIDs, not for a particular layout), and its raw text.
type status struct {
	raw string
	doc any
}

func (c *cluster) status(t *testing.T) status {
	t.Helper()
	agent := c.agentPod(t)
	out, err := c.exec(context.Background(), sockhopNS, agent.Name, agentContainer, "sockhop", "status", "-o", "json")
	if err != nil {
		t.Fatalf("sockhop status: %v", err)
	}
	var doc any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("sockhop status -o json: %v\n%s", err, out)
	}
	return status{raw: out, doc: doc}
}

// counter returns the first number under a key that, lower-cased and without
// underscores, equals name (e.g. "redirectedbytes").
func (s status) counter(t *testing.T, name string) float64 {
	t.Helper()
	if v, ok := findNumber(s.doc, name); ok {
		return v
	}
	t.Fatalf("sockhop status has no counter %q:\n%s", name, s.raw)
	return 0
}

func findNumber(v any, name string) (float64, bool) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if n, ok := x.(float64); ok && strings.ReplaceAll(strings.ToLower(k), "_", "") == name {
				return n, true
			}
		}
		for _, x := range v {
			if n, ok := findNumber(x, name); ok {
				return n, true
			}
		}
	case []any:
		for _, x := range v {
			if n, ok := findNumber(x, name); ok {
				return n, true
			}
		}
	}
	return 0, false
}

// lists reports whether the status names the pod (by UID, as it appears in its
// cgroup path with either dashes or underscores).
func (s status) lists(uid string) bool {
	return strings.Contains(s.raw, uid) || strings.Contains(s.raw, strings.ReplaceAll(uid, "-", "_"))
}

// namespace creates a fresh namespace, labelled for acceleration or not, deleted
// when the test ends.
func (c *cluster) namespace(t *testing.T, name string, accelerate bool) {
	t.Helper()
	ctx := context.Background()
	c.deleteNamespace(t, name)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if accelerate {
		ns.Labels = map[string]string{accelKey: accelValue}
	}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() { c.deleteNamespace(t, name) })
}

func (c *cluster) deleteNamespace(t *testing.T, name string) {
	ctx := context.Background()
	err := c.cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

// setLabel sets or (value "") removes the acceleration label of a namespace.
func (c *cluster) setLabel(t *testing.T, name, value string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, accelKey, value)
	if value == "" {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, accelKey)
	}
	if _, err := c.cs.CoreV1().Namespaces().Patch(context.Background(), name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("label namespace %s: %v", name, err)
	}
}

// meshPod creates a pod with Istio's interception rules (pilot-agent
// istio-iptables in an init container, as istio-init) and a sidecar proxy running
// as uid 1337, and waits until it is Ready. A server pod serves; any other pod
// idles so that clients can be exec'd in it.
func (c *cluster) meshPod(t *testing.T, ns, name string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	pod := meshPodSpec(ns, name, annotations)
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got = p
		return podReady(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not Ready: %v (phase %s)", ns, name, err, got.Status.Phase)
	}
	return got
}

// meshPodSpec is the pod meshPod creates.
func meshPodSpec(ns, name string, annotations map[string]string) *corev1.Pod {
	app := []string{"workload", "sleep"}
	if strings.HasPrefix(name, "server") {
		app = []string{"workload", "server", "-seed", fmt.Sprint(serverSeed)}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: annotations, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			EnableServiceLinks:            ptr.To(false),
			AutomountServiceAccountToken:  ptr.To(false),
			InitContainers: []corev1.Container{{
				Name: "istio-init", Image: workloadImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"pilot-agent", "istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*"},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}},
				},
			}},
			Containers: []corev1.Container{
				{
					Name: "app", Image: workloadImage, ImagePullPolicy: corev1.PullNever, Command: app,
					SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](1000)},
				},
				{
					Name: "istio-proxy", Image: workloadImage, ImagePullPolicy: corev1.PullNever, Command: []string{"workload", "proxy"},
					SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337)},
				},
			},
		},
	}
	return pod
}

// accelerated waits for an Accelerated event of this pod (by UID) and reports
// whether one came within the timeout.
func (c *cluster) accelerated(pod *corev1.Pod, timeout time.Duration) bool {
	sel := fields.Set{"reason": "Accelerated", "involvedObject.uid": string(pod.UID)}.AsSelector().String()
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		evs, err := c.cs.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
		return err == nil && len(evs.Items) > 0, nil
	})
	return err == nil
}

// summary waits for a per-pod summary Event of the agent (reason
// Accelerating or NotAccelerating) on this pod and returns its reason and
// note ("" when none came within the timeout).
func (c *cluster) summary(pod *corev1.Pod, timeout time.Duration) (reason, note string) {
	sel := fields.Set{"involvedObject.uid": string(pod.UID)}.AsSelector().String()
	_ = wait.PollUntilContextTimeout(context.Background(), time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		evs, err := c.cs.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Reason == "Accelerating" || e.Reason == "NotAccelerating" {
				reason, note = e.Reason, e.Message
				if e.Reason == "Accelerating" {
					return true, nil
				}
			}
		}
		return false, nil
	})
	return reason, note
}

// podStats is the "stats" of the pod's attachment in sockhop status (nil
// when it lists none for the pod).
func (s status) podStats(uid string) map[string]any {
	atts, _ := dig(s.doc, "attachments").([]any)
	for _, a := range atts {
		m, _ := a.(map[string]any)
		if m["pod_uid"] == uid || m["pod_uid"] == strings.ReplaceAll(uid, "-", "_") {
			st, _ := m["stats"].(map[string]any)
			return st
		}
	}
	return nil
}

// streamResult is what `workload client -mode stream` prints.
type streamResult struct {
	Conns         int      `json:"conns"`
	BytesSent     int64    `json:"bytes_sent"`
	BytesVerified int64    `json:"bytes_verified"`
	Resets        int      `json:"resets"`
	Errors        []string `json:"errors"`
}

// stream runs checksummed full-duplex streams from the client pod's app container
// to the server pod, through both sidecars.
func (c *cluster) stream(ctx context.Context, client, server *corev1.Pod, conns int, bytes, rate int64) (streamResult, error) {
	out, err := c.exec(ctx, client.Namespace, client.Name, "app", "workload", "client", "-mode", "stream",
		"-target", server.Status.PodIP+":8081", "-conns", fmt.Sprint(conns), "-bytes", fmt.Sprint(bytes),
		"-rate", fmt.Sprint(rate), "-expect-seed", fmt.Sprint(serverSeed))
	var res streamResult
	if jerr := json.Unmarshal([]byte(out), &res); jerr != nil {
		return res, fmt.Errorf("stream client output %q: %v (exec: %v)", out, jerr, err)
	}
	return res, nil
}

// checkIntact fails the test unless every connection delivered every byte both ways.
func checkIntact(t *testing.T, what string, res streamResult, conns int, bytes int64) {
	t.Helper()
	want := int64(conns) * bytes
	if len(res.Errors) > 0 || res.Resets > 0 || res.BytesSent != want || res.BytesVerified != want {
		t.Errorf("%s: %d resets, sent %d and verified %d of %d bytes, errors: %v", what, res.Resets, res.BytesSent, res.BytesVerified, want, res.Errors)
	}
}

// streamInBackground starts paced streams and returns a function that waits for
// their result.
func (c *cluster) streamInBackground(client, server *corev1.Pod, conns int, bytes, rate int64) func() (streamResult, error) {
	type out struct {
		res streamResult
		err error
	}
	ch := make(chan out, 1)
	go func() {
		res, err := c.stream(context.Background(), client, server, conns, bytes, rate)
		ch <- out{res, err}
	}()
	return func() (streamResult, error) { o := <-ch; return o.res, o.err }
}
