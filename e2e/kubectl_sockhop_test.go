package e2e

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// Operators as docs/kubectl-sockhop-rbac.yaml grants them: the plugin runs
// impersonating a member of its group, so the documented RBAC is what is tested.
const (
	operatorGroup = "sockhop:operators"
	operatorUser  = "jane@example.com"
)

// pluginStatus is the part of `kubectl sockhop status -o json` the test reads.
type pluginStatus struct {
	Summary string `json:"summary"`
	Nodes   []struct {
		Node            string            `json:"node"`
		Agent           string            `json:"agent"`
		Ready           bool              `json:"ready"`
		Programs        string            `json:"programs"`
		Receivers       string            `json:"receivers"`
		PodsAccelerated int               `json:"pods_accelerated"`
		PodsOptedIn     int               `json:"pods_opted_in"`
		RedirectedBytes uint64            `json:"redirected_bytes"`
		Passthrough     map[string]uint64 `json:"passthrough"`
		StatusError     string            `json:"status_error"`
		Maps            []struct {
			Name     string `json:"name"`
			Capacity int    `json:"capacity"`
		} `json:"maps"`
	} `json:"nodes"`
	Pods []struct {
		Namespace   string `json:"namespace"`
		Pod         string `json:"pod"`
		Accelerated bool   `json:"accelerated"`
		EventReason string `json:"event_reason"`
		Stats       *struct {
			Connections uint64 `json:"connections"`
			Directions  uint64 `json:"directions"`
			Redirected  uint64 `json:"redirected"`
		} `json:"stats"`
	} `json:"pods"`
}

// checkKubectlSockhop builds kubectl-sockhop, runs it through kubectl's plugin
// mechanism as an operator with only the documented RBAC, and checks what
// status and sysdump say about the cluster: server and client (in ns, both
// accelerated, traffic redirected between them) must show.
func (c *cluster) checkKubectlSockhop(t *testing.T, ns string, server, client *corev1.Pod) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin, "github.com/sockhop/sockhop/cmd/kubectl-sockhop")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-sockhop: %v\n%s", err, out)
	}
	rbac, _ := filepath.Abs("../docs/kubectl-sockhop-rbac.yaml")
	if out, err := exec.Command("kubectl", "apply", "-f", rbac).CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", rbac, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("kubectl", "delete", "--ignore-not-found", "-f", rbac).Run() })

	plugin := func(t *testing.T, args ...string) string {
		t.Helper()
		// kubectl finds kubectl-sockhop on PATH; --kubeconfig is a plugin flag
		// like kubectl's, and the impersonation flags come from the same set.
		args = append([]string{"sockhop"}, append(args, "--kubeconfig", os.Getenv("KUBECONFIG"),
			"--as", operatorUser, "--as-group", operatorGroup)...)
		cmd := exec.Command("kubectl", args...)
		cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG=")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
		}
		return string(out)
	}
	node := server.Spec.NodeName

	t.Run("status -o json", func(t *testing.T) {
		out := plugin(t, "status", "-o", "json", "--pods")
		var st pluginStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		if len(st.Nodes) != 1 {
			t.Fatalf("%d node rows, want 1 (one node):\n%s", len(st.Nodes), out)
		}
		n := st.Nodes[0]
		if n.Node != node || !n.Ready || n.StatusError != "" || !strings.HasPrefix(n.Programs, "sockops ") {
			t.Errorf("node row: %+v", n)
		}
		// The receiver policy is the node CLI's, read in the agent pod.
		want := "proxies"
		if app, _ := dig(c.status(t).doc, "datapath", "app_receivers").(bool); app {
			want = "any"
		}
		if n.Receivers != want {
			t.Errorf("receivers %q, sockhop status in the agent pod says %q", n.Receivers, want)
		}
		if n.PodsAccelerated < 2 || n.PodsOptedIn < 2 || n.PodsAccelerated > n.PodsOptedIn {
			t.Errorf("pods accelerated %d / opted in %d: want server and client in both", n.PodsAccelerated, n.PodsOptedIn)
		}
		if len(n.Maps) == 0 || n.Maps[0].Capacity == 0 {
			t.Errorf("no map fill in the node row: %+v", n.Maps)
		}
		if n.RedirectedBytes == 0 {
			t.Errorf("no redirected bytes after redirected streams: %+v", n)
		}
		found := 0
		for _, p := range st.Pods {
			if p.Namespace == ns && (p.Pod == server.Name || p.Pod == client.Name) {
				found++
				if !p.Accelerated || (p.EventReason != "Accelerated" && p.EventReason != "Accelerating") {
					t.Errorf("pod row %+v: want accelerated, last Event Accelerated or Accelerating", p)
				}
				if p.Stats == nil || p.Stats.Connections == 0 || p.Stats.Redirected == 0 || p.Stats.Redirected > p.Stats.Directions {
					t.Errorf("pod row %+v: want connections paired and directions redirected (%+v)", p, p.Stats)
				}
			}
		}
		if found != 2 {
			t.Errorf("--pods lists %d of the server and client pods:\n%s", found, out)
		}
		if !strings.HasPrefix(st.Summary, "1 node(s), 1 agent(s) ready;") {
			t.Errorf("summary %q", st.Summary)
		}
	})

	t.Run("status table, wide, yaml", func(t *testing.T) {
		out := plugin(t, "status")
		for _, want := range []string{"NODE", "REDIRECTED", "MAP FILL", "HAZARDS SEEN", node, "ready", "2/2", "1 node(s), 1 agent(s) ready;"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		out = plugin(t, "status", "-o", "wide", "--pods")
		for _, want := range []string{"PROGRAMS", "sockops ", "3.0 MiB", server.Name, client.Name, "DIRECTIONS REDIRECTED", "Accelerat"} {
			if !strings.Contains(out, want) {
				t.Errorf("status -o wide --pods lacks %q:\n%s", want, out)
			}
		}
		t.Logf("kubectl sockhop status -o wide --pods:\n%s", out)
		var st pluginStatus
		if err := sigsyaml.Unmarshal([]byte(plugin(t, "status", "-o", "yaml")), &st); err != nil || len(st.Nodes) != 1 {
			t.Errorf("status -o yaml: %v %+v", err, st)
		}
	})

	t.Run("sysdump", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "dump.tar.gz")
		out := plugin(t, "sysdump", "--output-file", file)
		if !strings.Contains(out, "wrote "+file) {
			t.Errorf("sysdump said %q", out)
		}
		files := readTarGz(t, file)
		get := func(name string) string {
			t.Helper()
			b, ok := files["dump/"+name]
			if !ok {
				t.Errorf("sysdump has no %s (it has %v)", name, keys(files))
			}
			return string(b)
		}
		if errs := get("errors.txt"); errs != "" {
			t.Errorf("sysdump could not collect, with the documented RBAC:\n%s", errs)
		}
		dir := "nodes/" + node + "/"
		var st struct {
			Attachments []any `json:"attachments"`
		}
		if err := json.Unmarshal([]byte(get(dir+"status.json")), &st); err != nil || len(st.Attachments) < 2 {
			t.Errorf("%sstatus.json: %v, %d attachments", dir, err, len(st.Attachments))
		}
		var doctor struct {
			Checks []struct{ Check, Level, Detail string } `json:"checks"`
		}
		if err := json.Unmarshal([]byte(get(dir+"doctor.json")), &doctor); err != nil {
			t.Errorf("%sdoctor.json: %v", dir, err)
		}
		netCls := false
		for _, l := range doctor.Checks {
			if l.Check == "net_cls/net_prio" {
				// The e2e host mounts neither; the agent pod learns it from the kernel.
				netCls = l.Level == "ok" && strings.Contains(l.Detail, "/proc/self/cgroup")
			}
		}
		if !netCls {
			t.Errorf("doctor in the agent pod: no ok net_cls/net_prio line read from /proc/self/cgroup: %+v", doctor.Checks)
		}
		for name, want := range map[string]string{
			dir + "agent.log":               "",
			dir + "agent-pod.yaml":          "sockhop-agent",
			dir + "node.yaml":               "kernelVersion",
			dir + "version.txt":             "",
			"cluster/nodes.txt":             "kernel ",
			"cluster/daemonset.yaml":        "kind: DaemonSet",
			"cluster/version.yaml":          "gitVersion",
			"events/pods.yaml":              "Accelerated",
			"events/" + sockhopNS + ".yaml": "",
			"helm/values.yaml":              "cgroupfs",
			"helm/release.yaml":             "deployed",
			"helm/chart-defaults.yaml":      "proxyUIDs",
			"status.txt":                    "1 node(s), 1 agent(s) ready;",
			"status.json":                   `"pods_accelerated"`,
		} {
			got := get(name)
			if want == "" && got == "" && name != "events/"+sockhopNS+".yaml" {
				t.Errorf("sysdump %s is empty", name)
			}
			if !strings.Contains(got, want) {
				t.Errorf("sysdump %s lacks %q:\n%.400s", name, want, got)
			}
		}
	})
}

func readTarGz(t *testing.T, file string) map[string][]byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = b
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}
