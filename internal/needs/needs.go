// Package needs holds the one rule sockhop's tests follow when what a test
// needs is missing: outside CI the test is skipped and says why; in CI
// (CI=true) it fails, because a skipped test there would pass as green
// without having tested anything. Tests that need root, the kernel or a
// Kubernetes API server are also skipped under -short (make test-unit),
// which runs only what needs none of them. Only tests import this package.
package needs

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI: CI=true, as GitHub Actions,
// GitLab CI and most others set it.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing ends the test because a precondition is missing: a skip with
// the reason, or a failure in CI.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("cannot run (CI=true forbids skipping): %s", reason)
	}
	t.Skip(reason)
}

// Unless calls Missing when reason is not empty: reason says what is
// missing, "" that nothing is.
func Unless(t testing.TB, reason string) {
	t.Helper()
	if reason != "" {
		Missing(t, reason)
	}
}

// Root is for kernel tests: they need root, and do not run under -short.
// what says what the test does with it ("loads BPF programs").
func Root(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("kernel test (-short runs unit tests only): needs root, %s", what)
	}
	if os.Geteuid() != 0 {
		Missing(t, "kernel test: needs root, "+what)
	}
}

// Cluster is for tests against a Kubernetes API server (envtest): they do
// not run under -short; outside it, reason says what is missing, if
// anything.
func Cluster(t testing.TB, reason string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a Kubernetes API server, root and the kernel (-short runs unit tests only)")
	}
	Unless(t, reason)
}
