// Command ociimage packs host files into an OCI image-layout tar that
// `ctr -n k8s.io images import` accepts, without a container engine or registry.
//
//	ociimage --name sockhop/pause:e2e --file /pause=./pause --entrypoint /pause -o pause.tar
//	ociimage --name sockhop/busybox:e2e --file /bin/busybox=/bin/busybox \
//	    --symlink /bin/sh=busybox --dir /tmp:1777 --entrypoint /bin/sh -o busybox.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sockhop/sockhop/e2e/image"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run(args []string) error {
	fset := flag.NewFlagSet("ociimage", flag.ContinueOnError)
	var (
		spec                                 image.Spec
		files, links, dirs, entrypoint, cmds listFlag
		env, labels                          listFlag
		out                                  string
	)
	fset.StringVar(&spec.Name, "name", "", "image name, e.g. sockhop/pause:e2e (required)")
	fset.Var(&files, "file", "IMAGE_PATH=HOST_FILE[:MODE] (octal MODE; repeatable)")
	fset.Var(&links, "symlink", "IMAGE_PATH=TARGET (repeatable)")
	fset.Var(&dirs, "dir", "IMAGE_PATH[:MODE] (repeatable)")
	fset.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable, in order)")
	fset.Var(&cmds, "cmd", "cmd argument (repeatable, in order)")
	fset.Var(&env, "env", "KEY=VALUE (repeatable)")
	fset.Var(&labels, "label", "KEY=VALUE (repeatable)")
	fset.StringVar(&spec.User, "user", "", "user[:group] the process runs as")
	fset.StringVar(&spec.WorkingDir, "workdir", "", "working directory")
	fset.StringVar(&spec.Architecture, "arch", "", "architecture (default: this machine's)")
	fset.StringVar(&out, "o", "", "output tar file (required)")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if spec.Name == "" || out == "" || fset.NArg() != 0 {
		fset.Usage()
		return fmt.Errorf("--name and -o are required, and no positional arguments are accepted")
	}
	for _, f := range files {
		p, src, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("--file %q: want IMAGE_PATH=HOST_FILE[:MODE]", f)
		}
		e := image.Entry{Path: p, Source: src}
		if i := strings.LastIndex(src, ":"); i >= 0 {
			mode, err := parseMode(src[i+1:])
			if err != nil {
				return fmt.Errorf("--file %q: %w", f, err)
			}
			e.Source, e.Mode = src[:i], mode
		}
		spec.Entries = append(spec.Entries, e)
	}
	for _, l := range links {
		p, target, ok := strings.Cut(l, "=")
		if !ok || target == "" {
			return fmt.Errorf("--symlink %q: want IMAGE_PATH=TARGET", l)
		}
		spec.Entries = append(spec.Entries, image.Entry{Path: p, Link: target})
	}
	for _, d := range dirs {
		e := image.Entry{Path: d, Dir: true}
		if p, m, ok := strings.Cut(d, ":"); ok {
			mode, err := parseMode(m)
			if err != nil {
				return fmt.Errorf("--dir %q: %w", d, err)
			}
			e.Path, e.Mode = p, mode
		}
		spec.Entries = append(spec.Entries, e)
	}
	spec.Entrypoint, spec.Cmd, spec.Env = entrypoint, cmds, env
	if len(labels) > 0 {
		spec.Labels = map[string]string{}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return fmt.Errorf("--label %q: want KEY=VALUE", l)
			}
			spec.Labels[k] = v
		}
	}
	return image.WriteArchiveFile(out, spec)
}

func parseMode(s string) (int64, error) {
	m, err := strconv.ParseInt(s, 8, 64)
	if err != nil || m <= 0 || m > 0o7777 {
		return 0, fmt.Errorf("mode %q: want octal permission bits such as 0755", s)
	}
	return m, nil
}
