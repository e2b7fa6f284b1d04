package controllers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/sockhop/sockhop/internal/needs"
	"github.com/sockhop/sockhop/pkg/cgroup"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/metrics"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// The tests in this package that need an API server run against a real
// kube-apiserver and etcd (envtest, KUBEBUILDER_ASSETS from
// `e2e/cluster/build.sh envtest`), the real datapath (BPF programs pinned in a
// per-test directory of /sys/fs/bpf) and real cgroup v2 directories created
// per test under /sys/fs/cgroup[/unified]/sockhop-test-<random>.

var (
	restCfg     *rest.Config
	envtestSkip string // why the envtest tests cannot run here
	scheme      = runtime.NewScheme()
)

func TestMain(m *testing.M) {
	// Peer processes (pkg/testbed) are this binary, re-executed.
	testbed.RunPeerIfRequested()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	log.SetLogger(zap.New(zap.UseDevMode(true), zap.Level(zapLevel())))
	flag.Parse() // for testing.Short
	envtestSkip = envtestUnavailable()
	if envtestSkip != "" || testing.Short() {
		return m.Run()
	}
	env := &envtest.Environment{ControlPlaneStopTimeout: time.Minute}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest (KUBEBUILDER_ASSETS=%s): %v\n", os.Getenv("KUBEBUILDER_ASSETS"), err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
		}
	}()
	restCfg = cfg
	return m.Run()
}

// zapLevel is the test log level: errors only unless SOCKHOP_TEST_VERBOSE is set.
func zapLevel() zapcore.Level {
	if os.Getenv("SOCKHOP_TEST_VERBOSE") != "" {
		return -1
	}
	return 2
}

// envtestUnavailable says why the envtest tests cannot run, or "".
func envtestUnavailable() string {
	if os.Geteuid() != 0 {
		return "needs root: loads BPF programs and creates cgroups"
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return "KUBEBUILDER_ASSETS is unset: export KUBEBUILDER_ASSETS=$(e2e/cluster/build.sh envtest)"
	}
	if m := cgroups.Mode(); m != cgroups.Unified && m != cgroups.Hybrid {
		return fmt.Sprintf("no cgroup v2 hierarchy (cgroups mode %d)", m)
	}
	return ""
}

// requireEnvtest skips a test that needs the API server, root and the
// kernel under -short or when they are missing, and fails it in CI
// (CI=true) when they are missing (the needs rule).
func requireEnvtest(t *testing.T) {
	t.Helper()
	needs.Cluster(t, envtestSkip)
}

// testNode is one simulated node: its name scopes the agent's pod cache,
// its pin directory and cgroup root are its own.
type testNode struct {
	t        *testing.T
	name     string
	pinDir   string
	cgRoot   string // absolute: <mount>/sockhop-test-<random>
	resolver *cgroup.Resolver
	client   client.Client // direct, uncached
	ipNext   int
}

func newTestNode(t *testing.T) *testNode {
	t.Helper()
	requireEnvtest(t)
	suffix := randSuffix(t)
	mount := "/sys/fs/cgroup"
	if cgroups.Mode() == cgroups.Hybrid {
		mount = "/sys/fs/cgroup/unified"
	}
	n := &testNode{
		t:      t,
		name:   "node-" + suffix,
		pinDir: "/sys/fs/bpf/sockhop-test-" + suffix,
		cgRoot: filepath.Join(mount, "sockhop-test-"+suffix),
	}
	for _, d := range []string{"kubepods/burstable", "kubepods/besteffort"} {
		if err := os.MkdirAll(filepath.Join(n.cgRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { removeCgroupTree(t, n.cgRoot) })
	t.Cleanup(func() {
		if err := datapath.Uninstall(n.pinDir); err != nil {
			t.Errorf("uninstall %s: %v", n.pinDir, err)
		}
		if _, err := os.Stat(n.pinDir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pin dir %s left behind", n.pinDir)
		}
	})
	var err error
	n.resolver, err = cgroup.NewResolver(cgroup.Options{Mount: mount, Driver: cgroup.Cgroupfs, CgroupRoot: filepath.Base(n.cgRoot)})
	if err != nil {
		t.Fatal(err)
	}
	if n.client, err = client.New(restCfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	return n
}

func randSuffix(t *testing.T) string {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// removeCgroupTree rmdirs every cgroup below and including dir, deepest first.
func removeCgroupTree(t *testing.T, dir string) {
	t.Helper()
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
}

// namespace creates a namespace, labelled for acceleration or not.
func (n *testNode) namespace(labelled bool) string {
	n.t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "sockhop-test-"}}
	if labelled {
		ns.Labels = map[string]string{DefaultNamespaceLabelKey: DefaultNamespaceLabelValue}
	}
	if err := n.client.Create(context.Background(), ns); err != nil {
		n.t.Fatal(err)
	}
	// envtest has no namespace controller: the namespace stays Terminating,
	// which is harmless, and its name is unique.
	n.t.Cleanup(func() { _ = n.client.Delete(context.Background(), ns) })
	return ns.Name
}

func (n *testNode) setNamespaceLabel(ns string, labelled bool) {
	n.t.Helper()
	var obj corev1.Namespace
	if err := n.client.Get(context.Background(), types.NamespacedName{Name: ns}, &obj); err != nil {
		n.t.Fatal(err)
	}
	patch := client.MergeFrom(obj.DeepCopy())
	if labelled {
		if obj.Labels == nil {
			obj.Labels = map[string]string{}
		}
		obj.Labels[DefaultNamespaceLabelKey] = DefaultNamespaceLabelValue
	} else {
		delete(obj.Labels, DefaultNamespaceLabelKey)
	}
	if err := n.client.Patch(context.Background(), &obj, patch); err != nil {
		n.t.Fatal(err)
	}
}

// pod creates a running BestEffort pod on the node, as kubelet would report
// it, with a fresh IP.
func (n *testNode) pod(ns, name string, mod func(*corev1.Pod)) *corev1.Pod {
	n.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName:   n.name,
			Containers: []corev1.Container{{Name: "app", Image: "busybox"}},
		},
	}
	if mod != nil {
		mod(p)
	}
	if err := n.client.Create(context.Background(), p); err != nil {
		n.t.Fatal(err)
	}
	n.ipNext++
	p.Status.Phase = corev1.PodRunning
	p.Status.QOSClass = corev1.PodQOSBestEffort
	ip := fmt.Sprintf("10.%d.%d.%d", 200+n.ipNext/65536%50, n.ipNext/256%256, n.ipNext%256)
	if p.Spec.HostNetwork {
		ip = "192.0.2.1"
	}
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if err := n.client.Status().Update(context.Background(), p); err != nil {
		n.t.Fatal(err)
	}
	return p
}

// cgroupDir is where kubelet would put the pod's cgroup.
func (n *testNode) cgroupDir(p *corev1.Pod) string {
	return n.resolver.PodDir(string(p.UID), cgroup.BestEffort)
}

// mkCgroup creates the pod's cgroup, as kubelet does before starting its
// sandbox.
func (n *testNode) mkCgroup(p *corev1.Pod) string {
	n.t.Helper()
	d := n.cgroupDir(p)
	if err := os.Mkdir(d, 0o755); err != nil {
		n.t.Fatal(err)
	}
	return d
}

func (n *testNode) rmCgroup(p *corev1.Pod) {
	n.t.Helper()
	if err := unix.Rmdir(n.cgroupDir(p)); err != nil {
		n.t.Fatal(err)
	}
}

func (n *testNode) deletePod(p *corev1.Pod) {
	n.t.Helper()
	// Grace period 0: there is no kubelet to confirm a graceful deletion.
	if err := n.client.Delete(context.Background(), p, client.GracePeriodSeconds(0)); err != nil {
		n.t.Fatal(err)
	}
}

// annotate sets (or with value "" removes) an annotation of a pod.
func (n *testNode) annotate(p *corev1.Pod, key, value string) {
	n.t.Helper()
	var obj corev1.Pod
	if err := n.client.Get(context.Background(), client.ObjectKeyFromObject(p), &obj); err != nil {
		n.t.Fatal(err)
	}
	patch := client.MergeFrom(obj.DeepCopy())
	if value == "" {
		delete(obj.Annotations, key)
	} else {
		if obj.Annotations == nil {
			obj.Annotations = map[string]string{}
		}
		obj.Annotations[key] = value
	}
	if err := n.client.Patch(context.Background(), &obj, patch); err != nil {
		n.t.Fatal(err)
	}
}

// agent is one run of the reconciler in a manager, on the real datapath.
type agent struct {
	t        *testing.T
	node     *testNode
	dp       *recordingDatapath
	rec      *PodReconciler
	events   *recordingRecorder
	metrics  *metrics.Metrics
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

type agentOptions struct {
	cgroupWait   time.Duration
	resyncPeriod time.Duration
}

// startAgent loads the datapath (or re-opens the pinned one) and starts a
// manager with the reconciler, as the agent's main does.
func (n *testNode) startAgent(opts agentOptions) *agent {
	n.t.Helper()
	dp, err := datapath.Load(datapath.Options{PinDir: n.pinDir})
	if err != nil {
		n.t.Fatalf("load datapath: %v", err)
	}
	cacheOpts, err := CacheOptions(n.name, NamespaceSelector{Key: DefaultNamespaceLabelKey, Value: DefaultNamespaceLabelValue})
	if err != nil {
		n.t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOpts,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr(true)},
	})
	if err != nil {
		n.t.Fatal(err)
	}
	a := &agent{
		t:       n.t,
		node:    n,
		dp:      &recordingDatapath{Datapath: dp},
		events:  &recordingRecorder{inner: mgr.GetEventRecorder("sockhop-agent")},
		metrics: metrics.New("test"),
		done:    make(chan error, 1),
	}
	a.metrics.SetCounterSource(dp)
	a.rec = &PodReconciler{
		Client:       mgr.GetClient(),
		Recorder:     a.events,
		Datapath:     a.dp,
		Cgroups:      n.resolver,
		Metrics:      a.metrics,
		NodeName:     n.name,
		Selector:     NamespaceSelector{Key: DefaultNamespaceLabelKey, Value: DefaultNamespaceLabelValue},
		CgroupWait:   opts.cgroupWait,
		ResyncPeriod: opts.resyncPeriod,
	}
	if err := a.rec.SetupWithManager(mgr); err != nil {
		n.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- mgr.Start(ctx) }()
	n.t.Cleanup(a.stop)
	return a
}

// stop stops the manager and closes the datapath: pins stay, as when the
// agent's process ends.
func (a *agent) stop() {
	a.stopOnce.Do(func() {
		a.cancel()
		select {
		case err := <-a.done:
			if err != nil {
				a.t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			a.t.Errorf("manager did not stop")
		}
		if err := a.dp.Close(); err != nil {
			a.t.Errorf("close datapath: %v", err)
		}
	})
}

func (a *agent) waitSynced() {
	a.t.Helper()
	eventually(a.t, 20*time.Second, func() (bool, string) { return a.rec.Synced(), "first convergence not done" })
}

// attachments reads the pins: the actual state.
func (a *agent) attachments() map[string]datapath.Attachment {
	a.t.Helper()
	atts, err := a.dp.Attachments()
	if err != nil {
		a.t.Fatal(err)
	}
	m := make(map[string]datapath.Attachment, len(atts))
	for _, at := range atts {
		m[at.CgroupPath] = at
	}
	return m
}

func (a *agent) attached(p *corev1.Pod) bool {
	_, ok := a.attachments()[a.node.cgroupDir(p)]
	return ok
}

func (a *agent) waitAttached(p *corev1.Pod) {
	a.t.Helper()
	eventually(a.t, 10*time.Second, func() (bool, string) {
		return a.attached(p), "pod " + p.Name + " not attached"
	})
}

func (a *agent) waitDetached(p *corev1.Pod) {
	a.t.Helper()
	eventually(a.t, 10*time.Second, func() (bool, string) {
		return !a.attached(p), "pod " + p.Name + " still attached"
	})
}

// waitEvent waits for an Event about the pod in the API, with that reason
// and a note containing notePart.
func (a *agent) waitEvent(p *corev1.Pod, eventtype, reason, notePart string) {
	a.t.Helper()
	var last []string
	eventually(a.t, 15*time.Second, func() (bool, string) {
		var list eventsv1.EventList
		if err := a.node.client.List(context.Background(), &list, client.InNamespace(p.Namespace)); err != nil {
			return false, err.Error()
		}
		last = last[:0]
		for _, e := range list.Items {
			if e.Regarding.UID != p.UID {
				continue
			}
			last = append(last, e.Type+"/"+e.Reason+": "+e.Note)
			if e.Type == eventtype && e.Reason == reason && strings.Contains(e.Note, notePart) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no %s %s event containing %q for pod %s; events: %q", eventtype, reason, notePart, p.Name, last)
	})
}

// lastIPs is what the reconciler last gave SetPodIPs.
func (a *agent) lastIPs() []string {
	a.dp.mu.Lock()
	defer a.dp.mu.Unlock()
	var s []string
	for _, ip := range a.dp.ips {
		s = append(s, ip.String())
	}
	return s
}

// recordingDatapath is the real datapath, remembering the IPs it was given
// (the datapath has no way to read them back).
type recordingDatapath struct {
	*datapath.Datapath
	mu  sync.Mutex
	ips []netip.Addr
}

func (d *recordingDatapath) SetPodIPs(ips []netip.Addr) error {
	d.mu.Lock()
	d.ips = slices.Clone(ips)
	d.mu.Unlock()
	return d.Datapath.SetPodIPs(ips)
}

// recordingRecorder records Events through the manager's real recorder and
// remembers them, to count what the API server may merge into a series.
type recordingRecorder struct {
	inner  EventRecorder
	mu     sync.Mutex
	events []recordedEvent
}

type recordedEvent struct {
	uid                     types.UID
	eventtype, reason, note string
}

func (r *recordingRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	e := recordedEvent{eventtype: eventtype, reason: reason, note: fmt.Sprintf(note, args...)}
	if o, ok := regarding.(metav1.Object); ok {
		e.uid = o.GetUID()
	}
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	r.inner.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

func (r *recordingRecorder) count(uid types.UID, reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.uid == uid && e.reason == reason {
			n++
		}
	}
	return n
}

// reconcileNow waits until the agent's cache holds the pod as the API
// server has it now, then reconciles it synchronously: what the agent does
// about the pod's latest change is done when this returns, so that a test
// can assert that something did not happen without sleeping.
func (a *agent) reconcileNow(p *corev1.Pod) ctrl.Result {
	a.t.Helper()
	key := client.ObjectKeyFromObject(p)
	var cur corev1.Pod
	if err := a.node.client.Get(context.Background(), key, &cur); err != nil {
		a.t.Fatal(err)
	}
	eventually(a.t, 10*time.Second, func() (bool, string) {
		var cached corev1.Pod
		err := a.rec.Client.Get(context.Background(), key, &cached)
		return err == nil && cached.ResourceVersion == cur.ResourceVersion,
			fmt.Sprintf("cache has %s at %q, the API server at %q (%v)", key, cached.ResourceVersion, cur.ResourceVersion, err)
	})
	res, err := a.rec.Reconcile(context.Background(), ctrl.Request{NamespacedName: key})
	if err != nil {
		a.t.Fatalf("reconcile %s: %v", key, err)
	}
	return res
}

func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }
