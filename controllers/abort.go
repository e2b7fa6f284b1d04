package controllers

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// StrandSource is what the StrandAborter needs of the datapath
// (*datapath.Datapath).
type StrandSource interface {
	Stranded() ([]datapath.Strand, error)
	AbortStranded(netnsPath string) ([]datapath.Strand, error)
	ForgetStranded(datapath.Strand) error
	Attachments() ([]datapath.Attachment, error)
}

// DefaultAbortPeriod is how often the StrandAborter looks for stranded
// receivers: an empty look is one map syscall, and a stranded receiver's
// connection fails within about this long.
const DefaultAbortPeriod = 200 * time.Millisecond

// strandGiveUp: a stranded receiver whose network namespace is not found
// for this long is forgotten (its pod is gone, or the agent cannot see the
// node's namespaces: then its connection stalls as before the abort).
const strandGiveUp = 30 * time.Second

// StrandAborter aborts the connections of stranded receivers: a container
// of an accelerated pod started to splice (or sendfile, or zerocopy
// receive) a connection while redirected bytes sat unread, bytes that call
// can never see. Rather than leave that connection to stall, it is
// destroyed in the pod's network namespace: the reader's call fails with
// ECONNABORTED, its peer gets a reset, the datapath counts it, and a
// Warning Event ReceiverStranded on the pod says so (docs/hazards.md).
type StrandAborter struct {
	Source   StrandSource
	Client   client.Client // the manager's cache, with the pod UID index
	Recorder EventRecorder
	Period   time.Duration
	// FindNetns gives a path to the network namespace with this inode.
	FindNetns func(inode uint64) (string, error)

	unsupported bool // the kernel cannot abort: said once, then idle
}

// NeedLeaderElection: every node's agent aborts its own pods' connections.
func (a *StrandAborter) NeedLeaderElection() bool { return false }

// Start runs until ctx ends.
func (a *StrandAborter) Start(ctx context.Context) error {
	period := a.Period
	if period == 0 {
		period = DefaultAbortPeriod
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := a.Abort(ctx); err != nil {
				log.FromContext(ctx).Error(err, "abort stranded receivers")
			}
		}
	}
}

// Abort handles the stranded receivers recorded since the last call, one
// network namespace at a time, and returns how many connections it aborted.
func (a *StrandAborter) Abort(ctx context.Context) (int, error) {
	if a.unsupported {
		return 0, nil
	}
	list, err := a.Source.Stranded()
	if err != nil || len(list) == 0 {
		return 0, err
	}
	logger := log.FromContext(ctx)
	byNetns := map[uint64][]datapath.Strand{}
	for _, s := range list {
		byNetns[s.Netns] = append(byNetns[s.Netns], s)
	}
	var (
		atts    []datapath.Attachment
		aborted int
		errs    []error
	)
	for ns, strands := range byNetns {
		path, err := a.FindNetns(ns)
		if err != nil {
			for _, s := range strands {
				if s.Waited > strandGiveUp {
					logger.Error(err, "cannot find a stranded receiver's network namespace; forgetting it, its connection may stall", "cgroupID", s.Cgroup, "waited", s.Waited)
					errs = append(errs, a.Source.ForgetStranded(s))
				}
			}
			continue
		}
		done, err := a.Source.AbortStranded(path)
		if errors.Is(err, datapath.ErrNotSupported) {
			logger.Error(err, "this kernel cannot abort stranded receivers: their connections may stall until their reader uses recvmsg again (docs/hazards.md)")
			a.unsupported = true
			return aborted, nil
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if atts == nil && len(done) > 0 {
			if atts, err = a.Source.Attachments(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, s := range done {
			if s.State == datapath.StrandAborted {
				aborted++
			}
			a.report(ctx, atts, s)
		}
	}
	return aborted, errors.Join(errs...)
}

// report tells the pod what became of one stranded receiver.
func (a *StrandAborter) report(ctx context.Context, atts []datapath.Attachment, s datapath.Strand) {
	logger := log.FromContext(ctx).WithValues("cgroupID", s.Cgroup, "state", s.State.String(), "waited", s.Waited)
	if s.State != datapath.StrandAborted && s.State != datapath.StrandFailed {
		// Recovered (its reader read the bytes after all) or gone
		// (closed first): nothing stalls, nothing to tell the pod.
		logger.V(1).Info("stranded receiver needs no abort")
		return
	}
	pod, container, ok := podOfCgroup(ctx, a.Client, atts, s.Cgroup)
	if !ok {
		logger.Info("stranded receiver handled, but its pod is not found", "container", container)
		return
	}
	logger = logger.WithValues("pod", client.ObjectKeyFromObject(pod))
	if s.State == datapath.StrandFailed {
		logger.Error(s.Err, "cannot abort a stranded receiver's connection")
		a.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, "ReceiverStranded", "Abort",
			"container cgroup %s started to splice an accelerated connection while redirected bytes were unread, which it can never read; aborting that connection failed (%v): it may stall (docs/hazards.md)",
			container, s.Err)
		return
	}
	logger.Info("aborted a stranded receiver's connection")
	a.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, "ReceiverStranded", "Abort",
		"container cgroup %s started to splice (or sendfile, or zerocopy-receive) an accelerated connection while redirected bytes were unread, which that call can never read: the connection was aborted %v later, its reader got ECONNABORTED and its peer a reset (docs/hazards.md)",
		container, s.Waited.Round(time.Millisecond))
}
