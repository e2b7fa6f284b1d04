package main

import (
	"strings"
	"testing"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
)

// TestAttachRefusesNextToTheAgent: attach by hand is refused where the node
// agent manages the datapath, running (it holds the node lock) or not (its
// mark is in the pins), since the agent would silently detach it. Neither
// case reaches the kernel: no root needed.
func TestAttachRefusesNextToTheAgent(t *testing.T) {
	cg := t.TempDir() // an existing directory is all attach checks before refusing

	running := t.TempDir()
	lock, err := datapath.TryLockNode(running)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	_, errOut, code := cli(t, "--bpffs-dir", running, "attach", cg)
	if code != cliout.ExitFailure || !strings.Contains(errOut, "sockhop-agent manages this node") {
		t.Errorf("attach next to a running agent: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = cli(t, "--bpffs-dir", running, "uninstall", "--yes")
	if code != cliout.ExitFailure || !strings.Contains(errOut, "stop the agent first") {
		t.Errorf("uninstall next to a running agent: exit %d, stderr %q", code, errOut)
	}

	restarting := t.TempDir()
	if err := datapath.MarkAgentManaged(restarting); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = cli(t, "--bpffs-dir", restarting, "attach", cg)
	if code != cliout.ExitFailure || !strings.Contains(errOut, "not running now") || !strings.Contains(errOut, "sockhop uninstall --yes") {
		t.Errorf("attach on an agent-managed node: exit %d, stderr %q", code, errOut)
	}
}
