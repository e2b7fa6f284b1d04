package datapath_test

import (
	"testing"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// The abort iterator loads on this kernel (or the kernel truly lacks it).
func TestProbeAbort(t *testing.T) {
	requireRoot(t)
	if err := datapath.ProbeAbort(); err != nil {
		t.Fatalf("%+v", err)
	}
}
