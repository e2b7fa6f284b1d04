package datapath

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked means another process (a running agent, or a CLI command)
// holds the node lock of the pin directory.
var ErrLocked = errors.New("another sockhop process holds the node lock")

// agentMarker is a directory in the pin directory that says the datapath
// is managed by the node agent (bpffs holds no regular files). Uninstall
// removes it with everything else.
const agentMarker = "managed-by-agent"

// NodeLock is an exclusive flock(2) on the pin directory. The agent holds it
// for its whole life, from before Load until after Uninstall, so that two
// agents on one node (a DaemonSet deleted and re-created, a rolling update
// with surge) never interleave: the new one waits until the old one has
// exited or uninstalled. The kernel drops the lock when the process dies.
type NodeLock struct{ f *os.File }

// LockNode takes the node lock of pinDir, creating the directory (on a
// bpffs) if needed, and waits for it until ctx is done. waiting, if not nil,
// is called once when the lock is held by someone else.
func LockNode(ctx context.Context, pinDir string, waiting func()) (*NodeLock, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if err := ensurePinDir(pinDir); err != nil {
		return nil, err
	}
	return lockDir(ctx, pinDir, waiting, true)
}

// TryLockNode takes the node lock of pinDir without waiting: ErrLocked
// when another process holds it. A pin directory that does not exist is
// held by no one: the lock returned then holds nothing.
func TryLockNode(pinDir string) (*NodeLock, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return &NodeLock{}, nil
	}
	return lockDir(context.Background(), pinDir, nil, false)
}

// lockDir locks dir. The directory is locked by its inode: Uninstall
// removes it, and the next holder must not keep a lock on the removed
// inode while another process locks a new directory of the same name. So
// once locked, the path must still name the locked inode, or we start over.
func lockDir(ctx context.Context, dir string, waiting func(), wait bool) (*NodeLock, error) {
	for {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		f, err := os.Open(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed between mkdir and open
			}
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if err := flock(ctx, f, waiting, wait); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s: %w", dir, ErrLocked)
			}
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		waiting = nil // said once
		if sameInode(f, dir) {
			return &NodeLock{f: f}, nil
		}
		f.Close() // locked a directory that was removed meanwhile
		if !wait {
			return nil, fmt.Errorf("%s: %w", dir, ErrLocked)
		}
	}
}

// flock takes an exclusive lock on f, polling so that ctx can stop the wait.
func flock(ctx context.Context, f *os.File, waiting func(), wait bool) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || !wait {
			return err
		}
		if waiting != nil {
			waiting()
			waiting = nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func sameInode(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// Unlock releases the lock; nil and repeated calls are fine.
func (l *NodeLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}

// MarkAgentManaged records in pinDir that the node agent manages this
// datapath: `sockhop attach` then refuses to attach by hand, since the
// agent detaches every cgroup that belongs to no pod. The mark stays while
// the agent restarts and goes with Uninstall.
func MarkAgentManaged(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if err := os.Mkdir(filepath.Join(pinDir, agentMarker), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mark %s as managed by the agent: %w", pinDir, err)
	}
	return nil
}

// AgentManaged reports whether the node agent manages the datapath in
// pinDir (see MarkAgentManaged).
func AgentManaged(pinDir string) bool {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	st, err := os.Stat(filepath.Join(pinDir, agentMarker))
	return err == nil && st.IsDir()
}
