package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
)

// Program is a sockhop program loaded in the kernel.
type Program struct {
	ID   uint32
	Name string
	Tag  string
	// Installed: it is the program pinned in the pin directory, which new
	// connections run. Any other sockhop program in the kernel is held by
	// the psocks of connections paired before an uninstall or an upgrade
	// (each psock holds its own reference to the sk_msg program, and the
	// program its maps): it runs their sends until they close. Another
	// sockhop process (a self-test, a second pin directory) also holds some.
	Installed bool
}

// Programs lists the sockhop programs (sock_ops and sk_msg programs whose
// name starts with sockhop_) loaded in the kernel, marking those installed
// in pinDir. It needs CAP_SYS_ADMIN to walk the kernel's program IDs.
func Programs(pinDir string) ([]Program, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	installed := map[ebpf.ProgramID]bool{}
	for _, name := range []string{"sockops", "sk_msg"} {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, progsDir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned program %s: %w", name, err)
		}
		if info, err := p.Info(); err == nil {
			if id, ok := info.ID(); ok {
				installed[id] = true
			}
		}
		p.Close()
	}
	var progs []Program
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list programs: %w", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded since the listing
		}
		info, err := p.Info()
		p.Close()
		if err != nil || !strings.HasPrefix(info.Name, "sockhop_") ||
			info.Type != ebpf.SockOps && info.Type != ebpf.SkMsg {
			continue
		}
		progs = append(progs, Program{ID: uint32(id), Name: info.Name, Tag: info.Tag, Installed: installed[id]})
	}
	sort.Slice(progs, func(i, j int) bool { return progs[i].ID < progs[j].ID })
	return progs, nil
}
