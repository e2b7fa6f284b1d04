package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/sockhop/sockhop/pkg/datapath"
)

func daemonSet(uid types.UID, deleting bool) *appsv1.DaemonSet {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "sockhop", Namespace: "sockhop-system", UID: uid}}
	if deleting {
		now := metav1.Now()
		ds.DeletionTimestamp = &now
	}
	return ds
}

type dsEvent struct {
	typ watch.EventType
	ds  *appsv1.DaemonSet
}

// TestUninstallDecision: only proof that the agent's own DaemonSet (by UID)
// is gone, with no successor, uninstalls; a deletion seen earlier is
// re-checked, and an error such as a 401 is never proof.
func TestUninstallDecision(t *testing.T) {
	var (
		notFound     = apierrors.NewNotFound(schema.GroupResource{Group: "apps", Resource: "daemonsets"}, "sockhop")
		unauthorized = apierrors.NewUnauthorized("token expired")
		forbidden    = apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "daemonsets"}, "sockhop", errors.New("no RBAC"))
		timeout      = errors.New("context deadline exceeded")
		old, new     = types.UID("old-uid"), types.UID("new-uid")
		deleted      = []dsEvent{{watch.Deleted, daemonSet(old, true)}}
		replaced     = []dsEvent{{watch.Modified, daemonSet(old, true)}, {watch.Deleted, daemonSet(old, true)}, {watch.Added, daemonSet(new, false)}}
	)
	for _, tc := range []struct {
		name      string
		own       types.UID
		events    []dsEvent
		look      *appsv1.DaemonSet
		err       error
		uninstall bool
		why       string
	}{
		{name: "restart: DaemonSet unchanged", own: old, look: daemonSet(old, false), why: "still exists"},
		{name: "helm uninstall: DaemonSet gone", own: old, events: deleted, err: notFound, uninstall: true, why: "gone"},
		{name: "being deleted (foreground)", own: old, look: daemonSet(old, true), uninstall: true, why: "being deleted"},
		{name: "deleted then re-created: the stale deletion does not count", own: old, events: replaced, look: daemonSet(new, false), why: "replaced"},
		{name: "re-created, seen only at the last look", own: old, events: deleted, look: daemonSet(new, false), why: "replaced"},
		{name: "re-created, then the look fails", own: old, events: replaced, err: unauthorized, why: "replaced"},
		{name: "401 alone is no uninstall", own: old, err: unauthorized, why: "proves nothing"},
		{name: "403 alone is no uninstall", own: old, err: forbidden, why: "cannot check"},
		{name: "timeout alone is no uninstall", own: old, err: timeout, why: "cannot check"},
		{name: "deleted, then RBAC gone (helm uninstall)", own: old, events: deleted, err: forbidden, uninstall: true, why: "seen deleted"},
		{name: "deleted, then ServiceAccount gone (helm uninstall)", own: old, events: deleted, err: unauthorized, uninstall: true, why: "seen deleted"},
		{name: "own UID unknown: first live one seen is ours", events: []dsEvent{{watch.Added, daemonSet(old, false)}, {watch.Deleted, daemonSet(old, true)}, {watch.Added, daemonSet(new, false)}}, look: daemonSet(new, false), why: "replaced"},
		{name: "successor deleted too", own: old, events: append(append([]dsEvent{}, replaced...), dsEvent{watch.Deleted, daemonSet(new, true)}), err: unauthorized, uninstall: true, why: "seen deleted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &daemonSetWatch{own: tc.own}
			for _, ev := range tc.events {
				w.observe(ev.typ, ev.ds)
			}
			look := tc.look
			if look == nil {
				look = &appsv1.DaemonSet{}
			}
			uninstall, why := w.decide(look, tc.err)
			if uninstall != tc.uninstall || !strings.Contains(why, tc.why) {
				t.Errorf("decide = %v, %q; want %v, containing %q", uninstall, why, tc.uninstall, tc.why)
			}
		})
	}
}

// TestLoadFailureDegrades: any load failure (not only a missing feature)
// makes a degraded agent with the reason, never an exit.
func TestLoadFailureDegrades(t *testing.T) {
	for _, loadErr := range []error{
		&datapath.FeatureError{Feature: "program type sk_msg", Err: errors.New("invalid argument")},
		errors.New("load sockhop BPF objects: field SkMsg: program sockhop_msg: apply CO-RE relocations: bad relocation"),
		errors.New("pinned maps in /sys/fs/bpf/sockhop belong to an incompatible sockhop version"),
	} {
		dp, degraded := loadDatapath(func(datapath.Options) (*datapath.Datapath, error) { return nil, loadErr },
			datapath.Options{}, logr.Discard())
		if dp != nil || degraded == nil || !errors.Is(degraded, loadErr) {
			t.Errorf("load failing with %v: datapath %v, degraded %v", loadErr, dp, degraded)
		}
		if msg := readiness(degraded, nil)(nil); msg == nil || !strings.Contains(msg.Error(), loadErr.Error()) {
			t.Errorf("readiness does not give the reason %q: %v", loadErr, msg)
		}
	}
}
