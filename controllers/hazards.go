package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// HazardSource is what the hazard reporter reads of the datapath
// (*datapath.Datapath).
type HazardSource interface {
	Learnt() (datapath.Learnt, error)
	Attachments() ([]datapath.Attachment, error)
	Counters() (datapath.Counters, error)
}

// fullLogEvery rate-limits the log line that says the maps are full.
const fullLogEvery = time.Minute

// DefaultHazardPeriod is how often the reporter looks for new learnt hazards.
const DefaultHazardPeriod = 2 * time.Second

// HazardReporter tells, by an Event on the pod, when the receiver guard
// learnt that a container of an accelerated pod reads paired sockets with
// splice, sendfile, zerocopy receive or MSG_WAITALL: that container's
// connections stay on TCP from then on (Normal), and when it did so with
// redirected bytes unread, which may stall that one connection (Warning).
// Each (container, hazard) is reported once per agent process.
type HazardReporter struct {
	Source   HazardSource
	Client   client.Client // the manager's cache, with the pod UID index
	Recorder EventRecorder
	Period   time.Duration
	// Aborts: a StrandAborter runs, so a stranded receiver's connection
	// is aborted rather than left to stall.
	Aborts bool

	reported map[uint64]datapath.ReaderHazards
	refused  uint64    // failed map operations seen so far
	loggedAt time.Time // when the last "maps full" line was logged
}

// NeedLeaderElection: every node's agent reports its own pods.
func (h *HazardReporter) NeedLeaderElection() bool { return false }

// Start runs until ctx ends.
func (h *HazardReporter) Start(ctx context.Context) error {
	period := h.Period
	if period == 0 {
		period = DefaultHazardPeriod
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := h.Report(ctx); err != nil {
				log.FromContext(ctx).Error(err, "report learnt hazards")
			}
		}
	}
}

// Report emits the Events for hazards learnt since the last call, and logs
// (at most once a minute) when map operations failed since: the node ran
// out of map capacity, and new connections stay on TCP.
func (h *HazardReporter) Report(ctx context.Context) error {
	if h.reported == nil {
		h.reported = map[uint64]datapath.ReaderHazards{}
	}
	if c, err := h.Source.Counters(); err == nil {
		var refused uint64
		for _, n := range c.MapErrors {
			refused += n
		}
		if refused > h.refused && time.Since(h.loggedAt) >= fullLogEvery {
			log.FromContext(ctx).Error(nil, "map operations failed: the node's maps are full (see sockhop_map_entries); new connections stay on TCP until entries free up or --max-connections grows",
				"failed", refused-h.refused, "errors", c.MapErrors)
			h.loggedAt = time.Now()
			h.refused = refused
		}
	}
	learnt, err := h.Source.Learnt()
	if err != nil {
		return err
	}
	var fresh []uint64
	for id, hz := range learnt.Hazardous {
		if hz&^h.reported[id] != 0 {
			fresh = append(fresh, id)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	atts, err := h.Source.Attachments()
	if err != nil {
		return err
	}
	for _, id := range fresh {
		pod, container, ok := podOfCgroup(ctx, h.Client, atts, id)
		if !ok {
			continue // not (or no longer) under an attached pod: retry later
		}
		hz := learnt.Hazardous[id]
		if hz&datapath.SawStranded != 0 && h.reported[id]&datapath.SawStranded == 0 {
			fate := "that connection may stall until its reader uses recvmsg again"
			if h.Aborts {
				fate = "sockhop aborts that connection (a ReceiverStranded event says when)"
			}
			h.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, "ReceiverStranded", "Guard",
				"container cgroup %s started to read an accelerated connection with %s while redirected bytes were unread: %s; this container's later connections stay on TCP (docs/hazards.md)",
				container, hz, fate)
		} else {
			h.Recorder.Eventf(pod, nil, corev1.EventTypeNormal, "HazardousReader", "Guard",
				"container cgroup %s reads accelerated connections with %s: its connections stay on TCP from now on (docs/hazards.md)",
				container, hz)
		}
		h.reported[id] = hz
	}
	return nil
}

// podOfCgroup finds the pod (in the cache) of a container's cgroup id.
func podOfCgroup(ctx context.Context, c client.Client, atts []datapath.Attachment, id uint64) (*corev1.Pod, string, bool) {
	podDir, container, ok := containerOf(atts, id)
	if !ok {
		return nil, container, false
	}
	uid, ok := podUIDFromCgroup(podDir)
	if !ok {
		return nil, container, false
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.MatchingFields{podUIDField: uid}); err != nil || len(pods.Items) == 0 {
		return nil, container, false
	}
	return &pods.Items[0], container, true
}

// containerOf finds the cgroup with this id under the attached pods'
// directories (a pod's containers are its subdirectories).
func containerOf(atts []datapath.Attachment, id uint64) (podDir, container string, ok bool) {
	for _, a := range atts {
		if a.CgroupPath == "" || !a.Live {
			continue
		}
		if a.CgroupID == id {
			return a.CgroupPath, a.CgroupPath, true
		}
		found := ""
		filepath.WalkDir(a.CgroupPath, func(path string, d os.DirEntry, err error) error {
			switch {
			case found != "":
				return filepath.SkipAll
			case err != nil:
				return filepath.SkipDir
			case !d.IsDir():
				return nil
			}
			var st syscall.Stat_t
			if syscall.Stat(path, &st) == nil && st.Ino == id {
				found = path
				return filepath.SkipAll
			}
			return nil
		})
		if found != "" {
			return a.CgroupPath, found, true
		}
	}
	return "", fmt.Sprint(id), false
}
