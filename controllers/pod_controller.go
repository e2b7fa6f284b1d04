// Package controllers holds the node agent's reconciler: it keeps the
// sockops program attached to the cgroup of exactly the pods of this node
// that should be accelerated, and detached from every other.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/sockhop/sockhop/pkg/cgroup"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/metrics"
)

// Datapath is what the reconciler needs of the loaded datapath
// (*datapath.Datapath).
type Datapath interface {
	Attach(cgroupDir string, cfg datapath.PodConfig) error
	Detach(cgroupDir string) error
	DetachID(cgroupID uint64) error
	Attachments() ([]datapath.Attachment, error)
	SetPodIPs(ips []netip.Addr) error
}

// CgroupResolver finds pods' cgroup directories (*cgroup.Resolver).
type CgroupResolver interface {
	// Resolve returns the existing directory of the pod; the error wraps
	// cgroup.ErrNotFound when there is none (yet).
	Resolve(podUID string, qos cgroup.QOSClass) (string, error)
	// PodDir is where the pod's directory is or will be.
	PodDir(podUID string, qos cgroup.QOSClass) string
}

// EventRecorder records Events about pods (events.k8s.io/v1), as
// controller-runtime's manager.GetEventRecorder gives.
type EventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Defaults of the PodReconciler's timing knobs.
const (
	DefaultCgroupWait   = 2 * time.Minute
	DefaultResyncPeriod = time.Minute
	// cgroupPollMin and cgroupPollMax bound the backoff while a pod's cgroup
	// is missing; the cgroup watcher usually triggers the attach sooner.
	cgroupPollMin  = 100 * time.Millisecond
	cgroupPollMax  = 2 * time.Second
	cgroupPollSlow = 30 * time.Second
)

// PodReconciler attaches the datapath to the cgroups of the pods of one node
// that should be accelerated (see Wanted) and detaches it from all others.
// The desired state comes from the API (through the manager's node-scoped
// cache), the actual state from the datapath's pins, so that a restarted
// agent converges without re-attaching what is attached.
type PodReconciler struct {
	Client   client.Client // reads Pods and Namespaces from the cache
	Recorder EventRecorder
	Datapath Datapath
	Cgroups  CgroupResolver
	Metrics  *metrics.Metrics
	NodeName string
	Selector NamespaceSelector
	// CgroupWait is how long a pod's cgroup may be missing before a Warning
	// Event says so; 0 means DefaultCgroupWait.
	CgroupWait time.Duration
	// ResyncPeriod is how often everything is converged again, which also
	// removes attachments whose pod or cgroup went away unnoticed; 0 means
	// DefaultResyncPeriod.
	ResyncPeriod time.Duration

	mu       sync.Mutex
	loaded   bool                               // attached holds the pins' state
	attached map[string]attachment              // by cgroup directory
	pods     map[types.NamespacedName]*podState // pods seen since start
	seen     map[string]time.Time               // pod UID → when its cgroup appeared
	podIPs   []netip.Addr                       // last given to SetPodIPs
	ipsSet   bool
	synced   atomic.Bool           // the first convergence is done
	pinsErr  atomic.Pointer[error] // why the pins could not be read last time; nil when they could

	cgroupEvents chan event.TypedGenericEvent[string] // pod UIDs whose cgroup appeared
}

type attachment struct {
	id  uint64
	uid string // pod UID read from the directory name; "" if not a pod's
	cfg datapath.PodConfig
}

type podState struct {
	uid           types.UID
	ips           []netip.Addr // of the pod while attached
	missingSince  time.Time    // when its cgroup was first missing
	missingTries  int
	missingWarned bool
	failure       string // last AccelerationFailed note, not to repeat it
}

// podUIDField indexes the cached pods by UID, to find the pod of a cgroup.
const podUIDField = "metadata.uid"

// SetupWithManager registers the reconciler, its watches, the cgroup
// watcher and the periodic convergence with mgr.
func (r *PodReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.attached = map[string]attachment{}
	r.pods = map[types.NamespacedName]*podState{}
	r.seen = map[string]time.Time{}
	r.cgroupEvents = make(chan event.TypedGenericEvent[string], 1024)

	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Pod{}, podUIDField,
		func(o client.Object) []string { return []string{string(o.GetUID())} }); err != nil {
		return fmt.Errorf("index pods by uid: %w", err)
	}
	if err := mgr.Add(&convergence{r: r, cache: mgr.GetCache()}); err != nil {
		return fmt.Errorf("add convergence: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("sockhop-pod").
		For(&corev1.Pod{}).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.podsOfNamespace),
			builder.WithPredicates(predicate.LabelChangedPredicate{})).
		WatchesRawSource(source.Channel(r.cgroupEvents,
			handler.TypedEnqueueRequestsFromMapFunc(r.podsOfUID))).
		Complete(r)
}

// Synced reports whether the first convergence after start is done.
func (r *PodReconciler) Synced() bool { return r.synced.Load() }

// Ready is nil once the first convergence is done and for as long as the
// datapath's pins can be read; else it says why the node is not served.
func (r *PodReconciler) Ready() error {
	if !r.synced.Load() {
		return errors.New("first convergence not done yet")
	}
	if err := r.pinsErr.Load(); err != nil {
		return fmt.Errorf("cannot read the datapath's pins: %w", *err)
	}
	return nil
}

// Reconcile brings one pod's attachment to what it should be.
func (r *PodReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var pod corev1.Pod
	if err := r.Client.Get(ctx, req.NamespacedName, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			r.mu.Lock()
			defer r.mu.Unlock()
			return ctrl.Result{}, r.forgetLocked(ctx, req.NamespacedName)
		}
		return ctrl.Result{}, fmt.Errorf("get pod %s: %w", req.NamespacedName, err)
	}
	ns, err := r.namespace(ctx, pod.Namespace)
	if err != nil {
		return ctrl.Result{}, err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.loadLocked(); err != nil {
		return ctrl.Result{}, err
	}
	return r.syncLocked(ctx, &pod, ns)
}

// namespace returns the pod's namespace from the cache, nil when the cache
// does not have it (it does not exist, or lacks the label the cache is
// scoped to).
func (r *PodReconciler) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, types.NamespacedName{Name: name}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return &ns, nil
}

// syncLocked converges one existing pod.
func (r *PodReconciler) syncLocked(ctx context.Context, pod *corev1.Pod, ns *corev1.Namespace) (ctrl.Result, error) {
	st := r.stateLocked(ctx, pod)
	want, why := Wanted(pod, ns, r.Selector, r.NodeName)
	var cfg datapath.PodConfig
	if want {
		var err error
		if cfg, err = PodConfig(pod); err != nil {
			r.failLocked(pod, st, "Validate", err.Error()+"; the pod stays on TCP")
			return ctrl.Result{}, r.removeLocked(ctx, pod, st, err.Error())
		}
	}
	if !want {
		st.failure = ""
		st.missingSince, st.missingTries, st.missingWarned = time.Time{}, 0, false
		// The attach latency counts from when the pod is wanted and its
		// cgroup exists, not from when its cgroup appeared while it was not
		// wanted (namespace not labelled yet, pod opted out).
		delete(r.seen, string(pod.UID))
		return ctrl.Result{}, r.removeLocked(ctx, pod, st, why)
	}

	uid := string(pod.UID)
	resolved := time.Now()
	dir, err := r.Cgroups.Resolve(uid, cgroup.QOSClass(pod.Status.QOSClass))
	if errors.Is(err, cgroup.ErrNotFound) {
		return r.cgroupMissingLocked(ctx, pod, st, err), nil
	}
	if err != nil {
		r.failLocked(pod, st, "Resolve", fmt.Sprintf("cannot find the pod's cgroup: %v", err))
		return ctrl.Result{}, fmt.Errorf("accelerate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	st.missingSince, st.missingTries, st.missingWarned = time.Time{}, 0, false

	cur, attached := r.attached[dir]
	if attached && slices.Equal(cur.cfg.ExcludePorts, cfg.ExcludePorts) {
		st.failure = ""
		return ctrl.Result{}, r.setIPsLocked(ctx, st, podIPs(pod))
	}
	if err := r.Datapath.Attach(dir, cfg); err != nil {
		r.Metrics.AttachFailed()
		if errors.Is(err, os.ErrNotExist) {
			// The cgroup went away since it was resolved: the pod is
			// probably being deleted. Look again later.
			return r.cgroupMissingLocked(ctx, pod, st, err), nil
		}
		r.failLocked(pod, st, "Attach", fmt.Sprintf("cannot attach to cgroup %s: %v; the pod stays on TCP", dir, err))
		return ctrl.Result{}, fmt.Errorf("accelerate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	st.failure = ""
	r.attached[dir] = attachment{uid: uid, cfg: cfg}
	r.Metrics.SetPodsAccelerated(len(r.attached))
	note := "attached to cgroup " + dir + ": its new connections inside the pod and to this node's accelerated pods are paired, " +
		"and each direction is redirected once its receiver has read all of it and is seen reading safely"
	if len(cfg.ExcludePorts) > 0 {
		note += fmt.Sprintf("; connections on ports %v stay on TCP", cfg.ExcludePorts)
	}
	note += "; " + ReasonAccelerating + " or " + ReasonNotAccelerating + " Events will say what was redirected"
	if attached {
		r.Metrics.Attached(-1)
		r.Recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonAccelerated, "Attach", "configuration updated: %s", note)
	} else {
		// The cgroup was first seen by the watcher, or else just now.
		first, ok := r.seen[uid]
		if !ok || first.After(resolved) {
			first = resolved
		}
		delete(r.seen, uid)
		latency := time.Since(first)
		r.Metrics.Attached(latency)
		r.Recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonAccelerated, "Attach", "%s", note)
		log.FromContext(ctx).Info("accelerated pod", "cgroup", dir, "excludePorts", cfg.ExcludePorts)
	}
	return ctrl.Result{}, r.setIPsLocked(ctx, st, podIPs(pod))
}

// stateLocked returns the state of a pod, starting afresh when the pod was
// replaced by another of the same name (detaching the old one's cgroup).
func (r *PodReconciler) stateLocked(ctx context.Context, pod *corev1.Pod) *podState {
	key := client.ObjectKeyFromObject(pod)
	st := r.pods[key]
	if st != nil && st.uid != pod.UID {
		if err := r.forgetLocked(ctx, key); err != nil {
			// The periodic convergence retries the detach.
			log.FromContext(ctx).Error(err, "detach replaced pod", "uid", st.uid)
		}
		st = nil
	}
	if st == nil {
		st = &podState{uid: pod.UID}
		r.pods[key] = st
	}
	return st
}

// removeLocked detaches a pod that should not be accelerated, if it is
// attached, and says why in an Event.
func (r *PodReconciler) removeLocked(ctx context.Context, pod *corev1.Pod, st *podState, why string) error {
	if dir, ok := r.dirOfLocked(string(pod.UID)); ok {
		if err := r.detachLocked(dir); err != nil {
			r.failLocked(pod, st, "Detach", fmt.Sprintf("cannot detach from cgroup %s: %v", dir, err))
			return fmt.Errorf("stop accelerating pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		r.Recorder.Eventf(pod, nil, corev1.EventTypeNormal, ReasonAccelerationRemoved, "Detach",
			"%s; new connections use TCP, established ones are kept", why)
		log.FromContext(ctx).Info("stopped accelerating pod", "cgroup", dir, "reason", why)
	}
	return r.setIPsLocked(ctx, st, nil)
}

// forgetLocked handles a pod that no longer exists.
func (r *PodReconciler) forgetLocked(ctx context.Context, key types.NamespacedName) error {
	st := r.pods[key]
	if st == nil {
		return nil // unknown here: the convergence removes what is left
	}
	uid := string(st.uid)
	if dir, ok := r.dirOfLocked(uid); ok {
		if err := r.detachLocked(dir); err != nil {
			return fmt.Errorf("detach deleted pod %s: %w", key, err)
		}
		log.FromContext(ctx).Info("detached deleted pod", "cgroup", dir, "uid", uid)
	}
	delete(r.pods, key)
	delete(r.seen, uid)
	return r.updateIPsLocked(ctx, false)
}

// cgroupMissingLocked schedules another look for a pod whose cgroup does
// not exist yet, and says so in a Warning once it took too long.
func (r *PodReconciler) cgroupMissingLocked(ctx context.Context, pod *corev1.Pod, st *podState, err error) ctrl.Result {
	now := time.Now()
	if st.missingSince.IsZero() {
		st.missingSince = now
	}
	st.missingTries++
	wait := r.CgroupWait
	if wait <= 0 {
		wait = DefaultCgroupWait
	}
	if now.Sub(st.missingSince) < wait {
		d := cgroupPollMin << min(st.missingTries-1, 8)
		return ctrl.Result{RequeueAfter: min(d, cgroupPollMax)}
	}
	if !st.missingWarned {
		st.missingWarned = true
		log.FromContext(ctx).Info("pod cgroup still missing", "after", wait, "error", err.Error())
		r.failLocked(pod, st, "Resolve", fmt.Sprintf("the pod's cgroup did not appear within %s (%v); still checking every %s", wait, err, cgroupPollSlow))
	}
	return ctrl.Result{RequeueAfter: cgroupPollSlow}
}

// failLocked records an AccelerationFailed Warning, unless it is the same
// as the last one for this pod.
func (r *PodReconciler) failLocked(pod *corev1.Pod, st *podState, action, note string) {
	if st.failure == note {
		return
	}
	st.failure = note
	r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonAccelerationFailed, action, "%s", note)
}

// dirOfLocked finds the attached cgroup directory of a pod UID.
func (r *PodReconciler) dirOfLocked(uid string) (string, bool) {
	for dir, a := range r.attached {
		if a.uid == uid {
			return dir, true
		}
	}
	return "", false
}

func (r *PodReconciler) detachLocked(dir string) error {
	a := r.attached[dir]
	var err error
	if a.id != 0 {
		err = r.Datapath.DetachID(a.id)
	} else {
		err = r.Datapath.Detach(dir)
	}
	if err != nil {
		r.Metrics.DatapathError(metrics.OpDetach)
		return err
	}
	delete(r.attached, dir)
	r.Metrics.SetPodsAccelerated(len(r.attached))
	return nil
}

// loadLocked reads the actual state from the pins, once.
func (r *PodReconciler) loadLocked() error {
	if r.loaded {
		return nil
	}
	_, err := r.readActualLocked()
	return err
}

// readActualLocked reads the actual state from the pins.
func (r *PodReconciler) readActualLocked() ([]datapath.Attachment, error) {
	atts, err := r.Datapath.Attachments()
	if err != nil {
		r.pinsErr.Store(&err)
		r.Metrics.DatapathError(metrics.OpAttachments)
		return nil, fmt.Errorf("list attachments: %w", err)
	}
	r.pinsErr.Store(nil)
	r.attached = make(map[string]attachment, len(atts))
	for _, a := range atts {
		if a.CgroupPath == "" {
			continue // no recorded path: the convergence detaches it by ID
		}
		uid, _ := podUIDFromCgroup(a.CgroupPath)
		r.attached[a.CgroupPath] = attachment{id: a.CgroupID, uid: uid, cfg: a.Config}
	}
	r.loaded = true
	r.Metrics.SetPodsAccelerated(len(r.attached))
	return atts, nil
}

// setIPsLocked records the IPs of a pod (nil when it is not attached) and
// updates the datapath's set when it changed.
func (r *PodReconciler) setIPsLocked(ctx context.Context, st *podState, ips []netip.Addr) error {
	if slices.Equal(st.ips, ips) {
		return nil
	}
	st.ips = ips
	return r.updateIPsLocked(ctx, false)
}

// updateIPsLocked gives the datapath the IPs of all attached pods. Before
// the first convergence it does nothing: the set left by an earlier agent
// stays whole until every pod was looked at.
func (r *PodReconciler) updateIPsLocked(ctx context.Context, force bool) error {
	if !r.synced.Load() {
		return nil
	}
	var ips []netip.Addr
	for _, st := range r.pods {
		ips = append(ips, st.ips...)
	}
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	ips = slices.Compact(ips)
	if r.ipsSet && !force && slices.Equal(ips, r.podIPs) {
		return nil
	}
	if err := r.Datapath.SetPodIPs(ips); err != nil {
		r.Metrics.DatapathError(metrics.OpSetPodIPs)
		r.ipsSet = false // retried on the next change or convergence
		return fmt.Errorf("set pod IPs: %w", err)
	}
	r.podIPs, r.ipsSet = ips, true
	log.FromContext(ctx).V(1).Info("updated pod IPs", "count", len(ips))
	return nil
}

// podIPs parses status.podIPs, skipping what does not parse.
func podIPs(pod *corev1.Pod) []netip.Addr {
	var ips []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			ips = append(ips, a.Unmap())
		}
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			ips = append(ips, a.Unmap())
		}
	}
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(ips)
}

// podsOfNamespace maps a Namespace event to its pods on this node.
func (r *PodReconciler) podsOfNamespace(ctx context.Context, ns client.Object) []reconcile.Request {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(ns.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "list pods of namespace", "namespace", ns.GetName())
		return nil
	}
	return requests(pods.Items)
}

// podsOfUID maps a cgroup that appeared to its pod.
func (r *PodReconciler) podsOfUID(ctx context.Context, uid string) []reconcile.Request {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.MatchingFields{podUIDField: uid}); err != nil {
		log.FromContext(ctx).Error(err, "find pod by uid", "uid", uid)
		return nil
	}
	return requests(pods.Items)
}

func requests(pods []corev1.Pod) []reconcile.Request {
	reqs := make([]reconcile.Request, 0, len(pods))
	for i := range pods {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&pods[i])})
	}
	return reqs
}
