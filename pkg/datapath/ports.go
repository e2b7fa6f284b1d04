package datapath

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ParsePorts parses a comma-separated list of TCP ports ("5432,9300"; blanks
// around entries are allowed) into sorted, distinct ports: a port given
// twice counts once. An empty string is no port. It is the one rule for
// the pod annotation and the CLI's --exclude-ports.
func ParsePorts(s string) ([]uint16, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var ports []uint16
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("entry %d is empty", i+1)
		}
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("entry %d (%q) is not a port number", i+1, f)
		}
		if n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %d is out of range 1-65535", n)
		}
		if !slices.Contains(ports, uint16(n)) {
			ports = append(ports, uint16(n))
		}
	}
	if len(ports) > MaxExcludePorts {
		return nil, fmt.Errorf("%d ports given, at most %d can be excluded", len(ports), MaxExcludePorts)
	}
	slices.Sort(ports)
	return ports, nil
}
