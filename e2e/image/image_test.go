package image

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask must not change the test's mode
		t.Fatal(err)
	}
	return p
}

// extractArchive unpacks an archive written by WriteArchiveFile and opens it as an
// OCI image layout, the way containerd's importer reads it.
func extractArchive(t *testing.T, archive string) layout.Path {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("archive entry %q escapes the layout", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("unexpected entry type %c for %s in the layout archive", hdr.Typeflag, hdr.Name)
		}
	}
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("open layout: %v", err)
	}
	return lp
}

type fileInImage struct {
	typ     byte
	mode    int64
	content string
	link    string
}

// filesOf flattens the image's layers into path → file.
func filesOf(t *testing.T, img v1.Image) map[string]fileInImage {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]fileInImage{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want root", hdr.Name, hdr.Uid, hdr.Gid)
		}
		files[strings.TrimSuffix(hdr.Name, "/")] = fileInImage{hdr.Typeflag, hdr.Mode, string(data), hdr.Linkname}
	}
}

func TestWriteArchiveFile(t *testing.T) {
	src := t.TempDir()
	tool := writeFile(t, src, "tool", "#!/bin/sh\necho hi\n", 0o755)
	conf := writeFile(t, src, "conf", "key=value\n", 0o600)
	spec := Spec{
		Name: "sockhop/test:e2e",
		Entries: []Entry{
			{Path: "/usr/local/bin/tool", Source: tool},
			{Path: "/etc/tool.conf", Source: conf, Mode: 0o644},
			{Path: "/bin/sh", Link: "/usr/local/bin/tool"},
			{Path: "/tmp", Dir: true, Mode: 0o1777},
		},
		Entrypoint: []string{"/usr/local/bin/tool", "--serve"},
		Cmd:        []string{"--port=80"},
		Env:        []string{"PATH=/usr/local/bin:/bin"},
		User:       "65534:65534",
		WorkingDir: "/tmp",
		Labels:     map[string]string{"app": "test"},
	}
	archive := filepath.Join(t.TempDir(), "test.tar")
	if err := WriteArchiveFile(archive, spec); err != nil {
		t.Fatal(err)
	}

	lp := extractArchive(t, archive)
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if got, want := desc.Annotations[NameAnnotation], "docker.io/sockhop/test:e2e"; got != want {
		t.Errorf("annotation %s = %q, want %q", NameAnnotation, got, want)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index platform = %+v, want linux/%s", desc.Platform, runtime.GOARCH)
	}
	if desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest media type = %s, want OCI", desc.MediaType)
	}

	img, err := lp.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("config platform = %s/%s", cfg.OS, cfg.Architecture)
	}
	c := cfg.Config
	if !slices.Equal(c.Entrypoint, spec.Entrypoint) || !slices.Equal(c.Cmd, spec.Cmd) ||
		!slices.Equal(c.Env, spec.Env) || c.User != spec.User || c.WorkingDir != spec.WorkingDir ||
		c.Labels["app"] != "test" {
		t.Errorf("config = %+v, want the spec's entrypoint, cmd, env, user, workdir and labels", c)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("%d layers, %d diff ids, want 1 and 1", len(layers), len(cfg.RootFS.DiffIDs))
	}
	if diffID, err := layers[0].DiffID(); err != nil || diffID != cfg.RootFS.DiffIDs[0] {
		t.Errorf("layer diff id %v (%v) does not match config rootfs %v", diffID, err, cfg.RootFS.DiffIDs[0])
	}

	want := map[string]fileInImage{
		"usr":                {typ: tar.TypeDir, mode: 0o755},
		"usr/local":          {typ: tar.TypeDir, mode: 0o755},
		"usr/local/bin":      {typ: tar.TypeDir, mode: 0o755},
		"usr/local/bin/tool": {typ: tar.TypeReg, mode: 0o755, content: "#!/bin/sh\necho hi\n"},
		"etc":                {typ: tar.TypeDir, mode: 0o755},
		"etc/tool.conf":      {typ: tar.TypeReg, mode: 0o644, content: "key=value\n"},
		"bin":                {typ: tar.TypeDir, mode: 0o755},
		"bin/sh":             {typ: tar.TypeSymlink, mode: 0o777, link: "/usr/local/bin/tool"},
		"tmp":                {typ: tar.TypeDir, mode: 0o1777},
	}
	got := filesOf(t, img)
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("/%s missing from the image", p)
		} else if g != w {
			t.Errorf("/%s = %+v, want %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected /%s in the image", p)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	src := t.TempDir()
	bin := writeFile(t, src, "bin", "payload", 0o755)
	spec := Spec{Name: "repro", Entries: []Entry{{Path: "/bin", Source: bin}}, Entrypoint: []string{"/bin"}}
	var digests []v1.Hash
	for range 2 {
		img, err := Build(spec)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of the same spec differ: %v", digests)
	}
}

func TestBuildRejectsBadEntries(t *testing.T) {
	src := t.TempDir()
	file := writeFile(t, src, "f", "x", 0o644)
	for name, entries := range map[string][]Entry{
		"relative path":       {{Path: "bin/x", Source: file}},
		"root":                {{Path: "/", Dir: true}},
		"listed twice":        {{Path: "/x", Source: file}, {Path: "/x/", Source: file}},
		"no kind":             {{Path: "/x"}},
		"two kinds":           {{Path: "/x", Source: file, Link: "/y"}},
		"missing source":      {{Path: "/x", Source: filepath.Join(src, "absent")}},
		"directory as source": {{Path: "/x", Source: src}},
		"file as parent":      {{Path: "/x", Source: file}, {Path: "/x/y", Source: file}},
	} {
		if _, err := Build(Spec{Name: "bad", Entries: entries}); err == nil {
			t.Errorf("%s: Build accepted %+v", name, entries)
		}
	}
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                    "docker.io/library/busybox:latest",
		"busybox:1.35":               "docker.io/library/busybox:1.35",
		"sockhop/pause:e2e":          "docker.io/sockhop/pause:e2e",
		"docker.io/sockhop/agent:v1": "docker.io/sockhop/agent:v1",
		"registry.k8s.io/pause:3.10": "registry.k8s.io/pause:3.10",
		"localhost/sockhop:dev":      "localhost/sockhop:dev",
		"localhost:5000/a/b":         "localhost:5000/a/b:latest",
	} {
		got, err := NormalizeName(in)
		if err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "Upper/case:x", "a@sha256:abcd", "a b", "a:", "/a"} {
		if got, err := NormalizeName(bad); err == nil {
			t.Errorf("NormalizeName(%q) = %q, want an error", bad, got)
		}
	}
}
