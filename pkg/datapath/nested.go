package datapath

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrNested means a cgroup is inside an attached cgroup, or contains one.
// The sockops program would then run once per attached level for each of
// its connections (a bpf_link attaches with BPF_F_ALLOW_MULTI), pairing
// every socket twice: the kernel keeps a socket in one sockhash entry
// only, and which insert wins would be a race.
var ErrNested = errors.New("nested attachment")

// refuseNested fails when an attached cgroup other than id is an ancestor
// or a descendant of dir. Attached cgroups are read from sockhop_pods (one
// entry per attachment, with its path), not from the link pins: one map
// walk per attach.
func (d *Datapath) refuseNested(dir string, id uint64) error {
	dir = filepath.Clean(dir)
	var (
		key uint64
		pod sockhopShPod
	)
	iter := d.objs.SockhopPods.Iterate()
	for iter.Next(&key, &pod) {
		other := cString(pod.Path[:])
		if key == id || other == "" {
			continue
		}
		switch {
		case strings.HasPrefix(dir, other+"/"):
			return fmt.Errorf("attach %s: %w: it is inside %s, which is attached", dir, ErrNested, other)
		case strings.HasPrefix(other, dir+"/"):
			return fmt.Errorf("attach %s: %w: it contains %s, which is attached", dir, ErrNested, other)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("attach %s: list attached cgroups: %w", dir, err)
	}
	return nil
}
