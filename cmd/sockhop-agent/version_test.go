package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sockhop/sockhop/internal/needs"
)

// TestBuildsStampTheVersion: every way the binaries are built (make build,
// the e2e image build, the Dockerfile) sets main.version, so that
// sockhop_build_info and `sockhop version` do not say "dev" in production.
func TestBuildsStampTheVersion(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("make"); err != nil {
		needs.Missing(t, "no make on PATH: cannot check the Makefile's build")
	}
	out, err := exec.Command("make", "-C", root, "-s", "-n", "build", "VERSION=v9.8.7-test").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "-X main.version=v9.8.7-test") {
		t.Errorf("make build does not stamp the version:\n%s", out)
	}
	for file, want := range map[string]string{
		"e2e/images.sh": "-X main.version=${version}",
		"Dockerfile":    "-X main.version=${VERSION}",
	} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s does not stamp the version (%s)", file, want)
		}
	}
	v, err := exec.Command(filepath.Join(root, "hack/version.sh")).Output()
	if err != nil || strings.TrimSpace(string(v)) == "" {
		t.Errorf("hack/version.sh: %q, %v", v, err)
	}
}
