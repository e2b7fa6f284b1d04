// Package image builds single-layer OCI images from host files, without a container
// engine or a registry, and writes them as OCI image-layout tar archives that
// `ctr -n k8s.io images import` accepts.
//
// The e2e cluster has no registry: its images (the pause sandbox, busybox, the
// sockhop agent) are packed from binaries on the host and imported into containerd.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NameAnnotation is the index annotation containerd's importer takes the image name from.
const NameAnnotation = "io.containerd.image.name"

// refNameAnnotation is the OCI annotation for the tag of a manifest in a layout.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Entry is one filesystem object of the image.
type Entry struct {
	// Path is the absolute path inside the image.
	Path string
	// Source is the host file copied to Path. Empty for directories and symlinks.
	Source string
	// Link, when set, makes Path a symbolic link to Link.
	Link string
	// Dir makes Path a directory.
	Dir bool
	// Mode holds the Unix permission bits including setuid, setgid and sticky
	// (07777); zero means the source file's bits (files), 0755 (directories) or
	// 0777 (symlinks).
	Mode int64
}

// Spec describes an image.
type Spec struct {
	// Name is the image reference, e.g. "sockhop/pause:e2e". It is normalized the
	// way containerd and kubelet normalize references ("docker.io/sockhop/pause:e2e"),
	// so a pod that names the short form finds the imported image.
	Name       string
	Entries    []Entry
	Entrypoint []string
	Cmd        []string
	Env        []string
	User       string
	WorkingDir string
	Labels     map[string]string
	// Architecture defaults to the architecture this program runs on.
	Architecture string
}

// epoch is the timestamp of every file and of the image: the same inputs give the same
// image digest.
var epoch = time.Unix(0, 0).UTC()

// Build returns the image described by spec.
func Build(spec Spec) (v1.Image, error) {
	layerTar, err := layerTar(spec.Entries)
	if err != nil {
		return nil, fmt.Errorf("build layer of %s: %w", spec.Name, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("build layer of %s: %w", spec.Name, err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer to %s: %w", spec.Name, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", spec.Name, err)
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = spec.architecture()
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config = v1.Config{
		Entrypoint: spec.Entrypoint,
		Cmd:        spec.Cmd,
		Env:        spec.Env,
		User:       spec.User,
		WorkingDir: spec.WorkingDir,
		Labels:     spec.Labels,
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set config of %s: %w", spec.Name, err)
	}
	return img, nil
}

func (s Spec) architecture() string {
	if s.Architecture != "" {
		return s.Architecture
	}
	return runtime.GOARCH
}

// WriteLayout builds the image and writes it as an OCI image layout into dir, which
// must not exist or be empty. The index entry carries the containerd name annotation
// and the platform.
func WriteLayout(dir string, spec Spec) error {
	ref, err := NormalizeName(spec.Name)
	if err != nil {
		return err
	}
	img, err := Build(spec)
	if err != nil {
		return err
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("create image layout %s: %w", dir, err)
	}
	err = lp.AppendImage(img,
		layout.WithAnnotations(map[string]string{
			NameAnnotation:    ref,
			refNameAnnotation: ref[strings.LastIndex(ref, ":")+1:],
		}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: spec.architecture()}),
	)
	if err != nil {
		return fmt.Errorf("write %s to image layout %s: %w", ref, dir, err)
	}
	return nil
}

// WriteArchive builds the image and writes its OCI image layout as a tar archive to w.
func WriteArchive(w io.Writer, spec Spec) error {
	dir, err := os.MkdirTemp("", "ociimage-")
	if err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := WriteLayout(dir, spec); err != nil {
		return err
	}
	if err := tarDir(w, dir); err != nil {
		return fmt.Errorf("archive image layout of %s: %w", spec.Name, err)
	}
	return nil
}

// WriteArchiveFile is WriteArchive into a file, replaced only once complete.
func WriteArchiveFile(file string, spec Spec) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return fmt.Errorf("create %s: %w", file, err)
	}
	defer os.Remove(tmp.Name())
	if err := WriteArchive(tmp, spec); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// NormalizeName turns a short reference into the fully qualified one containerd's CRI
// plugin looks up: "busybox" → "docker.io/library/busybox:latest",
// "sockhop/pause:e2e" → "docker.io/sockhop/pause:e2e". Digests are not supported:
// an imported image is named by tag.
func NormalizeName(ref string) (string, error) {
	if _, err := name.NewTag(ref); err != nil {
		return "", fmt.Errorf("invalid image name %q: %w", ref, err)
	}
	repo, tag := ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	if slices.Contains(strings.Split(repo, "/"), "") {
		return "", fmt.Errorf("invalid image name %q: empty path component", ref)
	}
	first, _, hasSlash := strings.Cut(repo, "/")
	switch {
	case !hasSlash:
		repo = "docker.io/library/" + repo
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		repo = "docker.io/" + repo
	}
	return repo + ":" + tag, nil
}

// layerTar returns the uncompressed layer: every entry plus its missing parent
// directories, sorted by path, owned by root, timestamps at the epoch.
func layerTar(entries []Entry) ([]byte, error) {
	byPath := map[string]Entry{}
	for _, e := range entries {
		p, err := cleanPath(e.Path)
		if err != nil {
			return nil, err
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("%s: listed twice", e.Path)
		}
		kinds := 0
		for _, set := range []bool{e.Source != "", e.Link != "", e.Dir} {
			if set {
				kinds++
			}
		}
		if kinds != 1 {
			return nil, fmt.Errorf("%s: want exactly one of source file, link or directory", e.Path)
		}
		e.Path = p
		byPath[p] = e
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if e, ok := byPath[d]; ok {
				if !e.Dir {
					return nil, fmt.Errorf("%s: parent %s is not a directory", p, d)
				}
				continue
			}
			byPath[d] = Entry{Path: d, Dir: true}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		if err := writeEntry(tw, byPath[p]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// cleanPath turns "/usr/bin/x" into the tar name "usr/bin/x".
func cleanPath(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%s: path in image must be absolute", p)
	}
	c := strings.TrimPrefix(path.Clean(p), "/")
	if c == "" {
		return "", fmt.Errorf("%s: cannot replace the root directory", p)
	}
	return c, nil
}

func writeEntry(tw *tar.Writer, e Entry) error {
	hdr := &tar.Header{Name: e.Path, ModTime: epoch, Format: tar.FormatPAX, Uname: "root", Gname: "root"}
	switch {
	case e.Dir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		hdr.Mode = orMode(e.Mode, 0o755)
		return tw.WriteHeader(hdr)
	case e.Link != "":
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Link
		hdr.Mode = orMode(e.Mode, 0o777)
		return tw.WriteHeader(hdr)
	}
	f, err := os.Open(e.Source)
	if err != nil {
		return fmt.Errorf("add /%s: %w", e.Path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("add /%s: %w", e.Path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("add /%s: %s is not a regular file", e.Path, e.Source)
	}
	hdr.Typeflag = tar.TypeReg
	hdr.Size = fi.Size()
	hdr.Mode = orMode(e.Mode, unixMode(fi.Mode()))
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("add /%s: %w", e.Path, err)
	}
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("add /%s from %s: %w", e.Path, e.Source, err)
	}
	return nil
}

// orMode returns mode, or fallback when mode is zero.
func orMode(mode, fallback int64) int64 {
	if mode&0o7777 != 0 {
		return mode & 0o7777
	}
	return fallback
}

// unixMode converts Go's file mode to Unix permission bits.
func unixMode(m fs.FileMode) int64 {
	bits := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

// tarDir writes the files under dir into w, sorted, with paths relative to dir.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = epoch, time.Time{}, time.Time{}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
