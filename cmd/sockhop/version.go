package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/spf13/cobra"
)

// version is set at build time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func currentVersion() versionInfo {
	v := versionInfo{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
		if v.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
	}
	return v
}

func newVersionCommand(g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of this sockhop binary",
		Args:  noArgs,
	}
	validate := cliout.OutputFlag(cmd, &output, formatTable, formatJSON)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := validate(); err != nil {
			return err
		}
		v := currentVersion()
		if output == formatJSON {
			return cliout.WriteJSON(g.stdout, v)
		}
		commit := v.Commit
		if commit == "" {
			commit = "unknown"
		} else if v.Modified {
			commit += " (modified)"
		}
		_, err := fmt.Fprintf(g.stdout, "sockhop %s\ncommit: %s\ngo: %s %s\n", v.Version, commit, v.GoVersion, v.Platform)
		return err
	}
	return cmd
}
