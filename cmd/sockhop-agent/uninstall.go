package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// daemonSetWatch follows the agent's own DaemonSet, known by its UID, while
// the agent runs. `helm uninstall` deletes the DaemonSet and, right after,
// the agent's ServiceAccount and RBAC: by the time the agent gets SIGTERM
// it may no longer be allowed to ask, so what the watch saw is the fallback
// of the last look at shutdown. A DaemonSet of the same name with another
// UID is a successor (helm uninstall && helm install, kubectl replace
// --force, a GitOps replace): its agent takes over the pins, and this one
// must leave them alone.
type daemonSetWatch struct {
	mu        sync.Mutex
	own       types.UID // the DaemonSet that runs this agent; "" until known
	ownGone   bool      // it was seen deleted or being deleted
	successor types.UID // a live DaemonSet of the same name and another UID
}

// observe records one watch event; it returns what changed, for the log.
func (w *daemonSetWatch) observe(typ watch.EventType, ds *appsv1.DaemonSet) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	gone := typ == watch.Deleted || ds.DeletionTimestamp != nil
	if w.own == "" && !gone {
		w.own = ds.UID // the first live DaemonSet seen is the agent's own
		return ""
	}
	switch {
	case ds.UID == w.own && gone && !w.ownGone:
		w.ownGone = true
		return "the agent's DaemonSet is being deleted"
	case ds.UID != w.own && !gone && w.successor != ds.UID:
		w.successor = ds.UID
		return "a new DaemonSet of the same name replaces the agent's"
	case ds.UID != w.own && gone && w.successor == ds.UID:
		w.successor = ""
		return "the DaemonSet that replaced the agent's is being deleted"
	}
	return ""
}

// decide says whether to uninstall, given the last look at the DaemonSet
// (ds, or the error reading it) and what the watch saw. Only proof that
// the agent's own DaemonSet is gone, with no successor, uninstalls: an
// error (a 401 after a token rotation or an issuer change, a 403, a
// timeout) never does by itself.
func (w *daemonSetWatch) decide(ds *appsv1.DaemonSet, err error) (uninstall bool, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil && w.own != "" && ds.UID != w.own:
		return false, fmt.Sprintf("the DaemonSet was replaced by another (uid %s), whose agent takes over the pins: keeping the datapath installed", ds.UID)
	case err == nil && ds.DeletionTimestamp != nil:
		return true, "the DaemonSet is being deleted: uninstalling the datapath"
	case err == nil:
		return false, "DaemonSet still exists (restart, upgrade or drain): keeping the datapath installed"
	case apierrors.IsNotFound(err):
		return true, "the DaemonSet is gone: uninstalling the datapath"
	case w.ownGone && w.successor == "":
		// Typically helm uninstall: the RBAC or the ServiceAccount went
		// right after the DaemonSet. Should a new DaemonSet come, its
		// agent waits for the node lock, held until this uninstall is done.
		return true, fmt.Sprintf("the DaemonSet was seen deleted and cannot be read any more (%v): uninstalling the datapath", err)
	case w.successor != "":
		return false, fmt.Sprintf("a new DaemonSet (uid %s) replaced the agent's: keeping the datapath installed", w.successor)
	case apierrors.IsUnauthorized(err):
		return false, fmt.Sprintf("the API server refused the agent's credentials (%v), which proves nothing about the DaemonSet: keeping the datapath installed", err)
	}
	return false, fmt.Sprintf("cannot check the DaemonSet (%v): keeping the datapath installed", err)
}

// ownDaemonSetUID finds the UID of the DaemonSet that created this agent's
// pod, from the pod's controller reference; "" when it cannot tell (the
// watch then takes the first live DaemonSet of that name it sees).
func ownDaemonSetUID(ctx context.Context, cl client.Client, c *config) types.UID {
	if c.podName == "" {
		return ""
	}
	var pod corev1.Pod
	if err := cl.Get(ctx, types.NamespacedName{Namespace: c.daemonSetNamespace, Name: c.podName}, &pod); err != nil {
		return ""
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "DaemonSet" && ref.Name == c.daemonSetName && ref.Controller != nil && *ref.Controller {
			return ref.UID
		}
	}
	return ""
}

func watchDaemonSet(ctx context.Context, restCfg *rest.Config, scheme *runtime.Scheme, c *config, logger logr.Logger) *daemonSetWatch {
	w := &daemonSetWatch{}
	cl, err := client.NewWithWatch(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		logger.Error(err, "cannot watch the agent's DaemonSet; uninstall will rely on a last look at shutdown")
		return w
	}
	getCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	w.own = ownDaemonSetUID(getCtx, cl, c)
	cancel()
	go func() {
		for ctx.Err() == nil {
			wi, err := cl.Watch(ctx, &appsv1.DaemonSetList{}, client.InNamespace(c.daemonSetNamespace),
				client.MatchingFields{"metadata.name": c.daemonSetName})
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
				}
				continue
			}
			for ev := range wi.ResultChan() {
				if ds, ok := ev.Object.(*appsv1.DaemonSet); ok {
					if what := w.observe(ev.Type, ds); what != "" {
						logger.Info(what, "daemonset", c.daemonSetName, "uid", ds.UID)
					}
				}
			}
			wi.Stop()
		}
	}()
	return w
}

// uninstallIfDeleted removes sockhop from the node when the agent stops
// because its DaemonSet is gone or being deleted (helm uninstall). A
// restart, crash, upgrade, drain or a replaced DaemonSet leaves the pins,
// and with them every accelerated connection, for the next agent. The
// DaemonSet is looked at again right before acting: what the watch saw
// decides only when it cannot be read.
func uninstallIfDeleted(restCfg *rest.Config, scheme *runtime.Scheme, c *config, w *daemonSetWatch, logger logr.Logger) {
	if c.daemonSetName == "" || c.daemonSetNamespace == "" {
		logger.Info("DAEMONSET_NAME or POD_NAMESPACE unset: keeping the datapath installed")
		return
	}
	if w == nil {
		w = &daemonSetWatch{}
	}
	key := types.NamespacedName{Namespace: c.daemonSetNamespace, Name: c.daemonSetName}
	var ds appsv1.DaemonSet
	cl, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = cl.Get(ctx, key, &ds)
		cancel()
	}
	uninstall, why := w.decide(&ds, err)
	logger.Info(why, "daemonset", key, "uid", w.ownUID())
	if uninstall {
		uninstallDatapath(c, logger)
	}
}

func (w *daemonSetWatch) ownUID() types.UID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.own
}

func uninstallDatapath(c *config, logger logr.Logger) {
	if err := datapath.Uninstall(c.bpffsDir); err != nil {
		logger.Error(err, "uninstall datapath", "pinDir", c.bpffsDir)
		return
	}
	logger.Info("datapath uninstalled; established connections continue over TCP", "pinDir", c.bpffsDir)
}
