package datapath

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The node lock is a flock on a directory: it works on any file system, so
// these tests need neither root nor a bpffs.

func TestNodeLockExcludesASecondHolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	first, err := lockDir(context.Background(), dir, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLockNode(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLockNode while held: %v, want ErrLocked", err)
	}

	got := make(chan *NodeLock)
	waited := make(chan struct{})
	go func() {
		l, err := lockDir(context.Background(), dir, func() { close(waited) }, true)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-waited:
	case l := <-got:
		t.Fatalf("second lock taken while the first is held (%v)", l)
	case <-time.After(10 * time.Second):
		t.Fatal("second locker neither waited nor locked")
	}
	// The holder uninstalls: the directory goes, then the lock. The waiter
	// must not end up holding the removed directory's inode.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := first.Unlock(); err != nil {
		t.Fatal(err)
	}
	second := <-got
	defer second.Unlock()
	if !sameInode(second.f, dir) {
		t.Fatal("the second holder locked the removed directory, not the one now at the path")
	}
	if _, err := TryLockNode(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLockNode after the hand-over: %v, want ErrLocked", err)
	}
}

func TestNodeLockWaitStopsWithContext(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	first, err := lockDir(context.Background(), dir, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := lockDir(ctx, dir, nil, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lock with an expired context: %v, want DeadlineExceeded", err)
	}
}

func TestTryLockNodeWithoutPinDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	l, err := TryLockNode(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("TryLockNode created %s", dir)
	}
}

func TestAgentMarker(t *testing.T) {
	dir := t.TempDir()
	if AgentManaged(dir) {
		t.Fatal("fresh directory reported as agent-managed")
	}
	for range 2 { // idempotent
		if err := MarkAgentManaged(dir); err != nil {
			t.Fatal(err)
		}
	}
	if !AgentManaged(dir) {
		t.Fatal("marked directory not reported as agent-managed")
	}
}
