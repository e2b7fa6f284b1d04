package controllers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sockhop/sockhop/pkg/cgroup"
	"github.com/sockhop/sockhop/pkg/metrics"
)

// convergence is the manager Runnable that converges the whole node once the
// cache is synced and then every ResyncPeriod, and watches the QoS cgroup
// directories so that a pod is attached as soon as kubelet creates its
// cgroup, before its containers start.
type convergence struct {
	r     *PodReconciler
	cache cache.Cache
}

// NeedLeaderElection is false: every node's agent works on its own node.
func (c *convergence) NeedLeaderElection() bool { return false }

func (c *convergence) Start(ctx context.Context) error {
	ctx = log.IntoContext(ctx, log.FromContext(ctx).WithName("convergence"))
	logger := log.FromContext(ctx)
	w, err := newCgroupWatcher(c.r)
	if err != nil {
		// Polling still finds every cgroup, only later.
		logger.Error(err, "cannot watch cgroups; pods are attached on polling only")
	} else {
		defer w.close()
		go w.run(ctx)
	}
	if !c.cache.WaitForCacheSync(ctx) {
		return nil // stopped before the cache synced
	}
	// Until the first convergence gets through (the pins and the cache
	// could be read), the agent is not ready: try again soon.
	for start := time.Now(); ; {
		err := c.r.Converge(ctx)
		if c.r.Synced() {
			if err != nil {
				logger.Error(err, "first convergence: some pods are not converged yet")
			}
			logger.Info("converged", "took", time.Since(start))
			break
		}
		logger.Error(err, "first convergence failed; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}

	var guards guardState
	return every(ctx, c.r.ResyncPeriod, DefaultResyncPeriod, "convergence", func(ctx context.Context) error {
		if w != nil {
			w.addWatches()
		}
		return errors.Join(c.r.Converge(ctx), guards.release(ctx, c.r.Datapath))
	})
}

// guardReleaser is the part of a Datapath that takes the node-wide
// tracepoints away while nothing needs them (*datapath.Datapath).
type guardReleaser interface {
	ReleaseIdleGuards() (attached bool, err error)
}

// syscallGuardReporter is what a datapath may say about its syscall guard.
type syscallGuardReporter interface {
	SyscallGuard() string
	SyscallGuardFallback() error
}

// guardState remembers whether the node-wide tracepoints were attached at
// the last convergence, to log when that changes.
type guardState struct {
	known, attached bool
}

// release detaches the node-wide tracepoints when no pod is attached and no
// paired socket is open (Attach attaches them again first).
func (g *guardState) release(ctx context.Context, dp Datapath) error {
	r, ok := dp.(guardReleaser)
	if !ok {
		return nil
	}
	attached, err := r.ReleaseIdleGuards()
	if err != nil {
		return fmt.Errorf("release the node-wide tracepoints: %w", err)
	}
	if !g.known || attached != g.attached {
		why := "nothing to guard: no pod attached, no paired socket open"
		if attached {
			why = "pods attached or paired sockets open"
		}
		kv := []any{"attached", attached, "why", why}
		if s, ok := dp.(syscallGuardReporter); ok && attached {
			kv = append(kv, "syscallGuard", s.SyscallGuard())
			if err := s.SyscallGuardFallback(); err != nil {
				kv = append(kv, "syscallGuardFallback", err.Error())
			}
		}
		log.FromContext(ctx).Info("node-wide tracepoints", kv...)
	}
	g.known, g.attached = true, attached
	return nil
}

// Converge brings every pod of the node to its desired state and detaches
// every attachment that belongs to no pod of the node: the pod was deleted
// (perhaps while no agent ran) or its cgroup is gone. The first successful
// call marks the reconciler synced.
func (r *PodReconciler) Converge(ctx context.Context) error {
	var nsList corev1.NamespaceList
	if err := r.Client.List(ctx, &nsList); err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var podList corev1.PodList
	if err := r.Client.List(ctx, &podList); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	namespaces := make(map[string]*corev1.Namespace, len(nsList.Items))
	for i := range nsList.Items {
		namespaces[nsList.Items[i].Name] = &nsList.Items[i]
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	atts, err := r.readActualLocked() // the pins are the truth
	if err != nil {
		return err
	}

	live := make(map[string]bool, len(podList.Items))
	keys := make(map[types.NamespacedName]bool, len(podList.Items))
	for i := range podList.Items {
		p := &podList.Items[i]
		if p.Spec.NodeName == r.NodeName {
			live[string(p.UID)] = true
			keys[client.ObjectKeyFromObject(p)] = true
		}
	}

	var errs []error
	// Orphans first: a pod whose old link is defunct gets a fresh one below.
	for _, a := range atts {
		uid, _ := podUIDFromCgroup(a.CgroupPath)
		if a.CgroupPath != "" && a.Live && live[uid] {
			continue
		}
		if err := r.Datapath.DetachID(a.CgroupID); err != nil {
			r.Metrics.DatapathError(metrics.OpDetach)
			errs = append(errs, fmt.Errorf("detach orphan cgroup %d (%s): %w", a.CgroupID, a.CgroupPath, err))
			continue
		}
		delete(r.attached, a.CgroupPath)
		log.FromContext(ctx).Info("detached orphan", "cgroup", a.CgroupPath, "cgroupID", a.CgroupID, "podGone", !live[uid], "cgroupGone", !a.Live)
	}
	r.Metrics.SetPodsAccelerated(len(r.attached))
	for key := range r.pods {
		if !keys[key] {
			if err := r.forgetLocked(ctx, key); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i := range podList.Items {
		p := &podList.Items[i]
		if _, err := r.syncLocked(ctx, p, namespaces[p.Namespace]); err != nil {
			errs = append(errs, err) // the controller retries this pod
		}
	}
	for uid, t := range r.seen {
		if time.Since(t) > 10*time.Minute {
			delete(r.seen, uid)
		}
	}

	r.synced.Store(true)
	if err := r.updateIPsLocked(ctx, true); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// podUIDFromCgroup reads the pod UID from a pod cgroup directory as kubelet
// names it (either driver, any cgroup root).
func podUIDFromCgroup(dir string) (string, bool) {
	uid, _, ok := cgroup.PodOf(dir)
	return uid, ok
}

// cgroupWatcher turns the creation of a pod cgroup under the QoS
// directories into a reconcile of that pod.
type cgroupWatcher struct {
	r       *PodReconciler
	w       *fsnotify.Watcher
	dirs    []string
	watched map[string]bool
}

// zeroUID only serves to ask the resolver where pod directories go.
const zeroUID = "00000000-0000-0000-0000-000000000000"

func newCgroupWatcher(r *PodReconciler) (*cgroupWatcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch cgroups: %w", err)
	}
	cw := &cgroupWatcher{r: r, w: w, watched: map[string]bool{}}
	for _, q := range []cgroup.QOSClass{cgroup.Guaranteed, cgroup.Burstable, cgroup.BestEffort} {
		if d := r.Cgroups.PodDir(zeroUID, q); d != "" {
			cw.dirs = append(cw.dirs, filepath.Dir(d))
		}
	}
	cw.addWatches()
	return cw, nil
}

// addWatches watches the QoS directories that exist and are not watched yet
// (kubelet may create them after the agent starts).
func (cw *cgroupWatcher) addWatches() {
	for _, d := range cw.dirs {
		if cw.watched[d] {
			continue
		}
		if err := cw.w.Add(d); err == nil {
			cw.watched[d] = true
		}
	}
}

func (cw *cgroupWatcher) close() { cw.w.Close() }

func (cw *cgroupWatcher) run(ctx context.Context) {
	logger := log.FromContext(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-cw.w.Events:
			if !ok {
				return
			}
			if ev.Op&fsnotify.Create != 0 {
				cw.created(ev.Name)
			} else if ev.Op&fsnotify.Remove != 0 && cw.watched[ev.Name] {
				cw.w.Remove(ev.Name)
				delete(cw.watched, ev.Name)
			}
		case err, ok := <-cw.w.Errors:
			if !ok {
				return
			}
			// An overflow loses events: polling and the convergence cover them.
			logger.Error(err, "cgroup watch")
		}
	}
}

func (cw *cgroupWatcher) created(dir string) {
	uid, ok := podUIDFromCgroup(dir)
	if !ok {
		return
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return
	}
	cw.r.mu.Lock()
	if _, ok := cw.r.seen[uid]; !ok {
		cw.r.seen[uid] = time.Now()
	}
	cw.r.mu.Unlock()
	select {
	case cw.r.cgroupEvents <- event.TypedGenericEvent[string]{Object: uid}:
	default: // full: the pod's own backoff finds the cgroup
	}
}
