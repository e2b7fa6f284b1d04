package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

func newSysdumpCommand(c *cluster, stdout, stderr io.Writer) *cobra.Command {
	var (
		file    string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sysdump",
		Short: "Collect one archive with everything a sockhop bug report needs",
		Long: `Collect, into one .tar.gz: every agent's 'sockhop status' and 'sockhop doctor'
(JSON, run in the agent pod), its logs (current and previous container), the agent
pods, the DaemonSet, the nodes (kernel, OS, runtime), the sockhop Events of every
pod, the Events of the agents' namespace, the Helm release's values, and the
cluster view of 'kubectl sockhop status --pods'.

What cannot be collected (a missing permission, an agent that does not answer) is
written to errors.txt in the archive, and the rest is still collected. The archive
holds no Secret other than the Helm release's values.`,
		Example: `  kubectl sockhop sysdump
  kubectl sockhop sysdump --output-file /tmp/sockhop.tar.gz`,
		Args: noArgs,
	}
	cmd.Flags().StringVar(&file, "output-file", "", "archive to write (default sockhop-sysdump-<UTC time>.tar.gz in the current directory)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up on what is not collected by then")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := c.connect(); err != nil {
			return err
		}
		if file == "" {
			file = "sockhop-sysdump-" + time.Now().UTC().Format("20060102-150405") + ".tar.gz"
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		d := collectSysdump(ctx, c)
		if err := d.write(file); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (%d files", file, len(d.files))
		if len(d.errs) > 0 {
			fmt.Fprintf(stdout, ", %d item(s) not collected: see errors.txt", len(d.errs))
		}
		fmt.Fprintln(stdout, ")")
		return nil
	}
	return cmd
}

// sysdump is the archive being collected: file name to content, and what
// could not be collected.
type sysdump struct {
	mu    sync.Mutex
	files map[string][]byte
	errs  []string
}

func (d *sysdump) add(name string, b []byte) {
	d.mu.Lock()
	d.files[name] = b
	d.mu.Unlock()
}

func (d *sysdump) fail(what string, err error) {
	d.mu.Lock()
	d.errs = append(d.errs, what+": "+err.Error())
	d.mu.Unlock()
}

// addYAML adds v as YAML, or records why it could not be read.
func (d *sysdump) addYAML(name string, v any, err error) {
	if err != nil {
		d.fail(name, err)
		return
	}
	b, err := sigsyaml.Marshal(v)
	if err != nil {
		d.fail(name, err)
		return
	}
	d.add(name, b)
}

func collectSysdump(ctx context.Context, c *cluster) *sysdump {
	d := &sysdump{files: map[string][]byte{}}
	d.add("version.txt", fmt.Appendf(nil, "kubectl-sockhop %s\ncollected %s\nagents: namespace %s, selector %s\n",
		version(), time.Now().UTC().Format(time.RFC3339), c.namespace, c.selector))

	if v, err := c.cs.Discovery().ServerVersion(); err != nil {
		d.fail("cluster version", err)
	} else {
		d.addYAML("cluster/version.yaml", v, nil)
	}
	agents, err := c.agents(ctx)
	if err != nil {
		d.fail("agent pods", err)
	}

	var wg sync.WaitGroup
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			collectAgent(ctx, c, d, &agents[i])
		}()
	}

	st, err := collectClusterStatus(ctx, c, true)
	if err != nil {
		d.fail("cluster status", err)
	} else {
		var b bytes.Buffer
		if err := writeStatus(&b, st, "wide", true); err == nil {
			d.add("status.txt", b.Bytes())
		}
		b.Reset()
		_ = writeStatus(&b, st, "json", true)
		d.add("status.json", b.Bytes())
	}

	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		d.fail("nodes", err)
	} else {
		var facts strings.Builder
		for _, n := range nodes.Items {
			i := n.Status.NodeInfo
			fmt.Fprintf(&facts, "%s: kernel %s, %s, %s, kubelet %s, %s/%s\n", n.Name, i.KernelVersion, i.OSImage,
				i.ContainerRuntimeVersion, i.KubeletVersion, i.OperatingSystem, i.Architecture)
			n.ManagedFields = nil
			n.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
			d.addYAML("nodes/"+n.Name+"/node.yaml", n, nil)
		}
		d.add("cluster/nodes.txt", []byte(facts.String()))
	}

	events, err := sockhopEvents(ctx, c)
	d.addYAML("events/pods.yaml", events, err)
	nsEvents, err := c.cs.CoreV1().Events(c.namespace).List(ctx, metav1.ListOptions{})
	if err == nil {
		for i := range nsEvents.Items {
			nsEvents.Items[i].ManagedFields = nil
		}
		d.addYAML("events/"+c.namespace+".yaml", nsEvents.Items, nil)
	} else {
		d.fail("events/"+c.namespace+".yaml", err)
	}

	collectRelease(ctx, c, d, agents)
	wg.Wait()
	return d
}

// collectAgent adds one agent's pod, status, doctor and logs under
// nodes/<node>/.
func collectAgent(ctx context.Context, c *cluster, d *sysdump, pod *corev1.Pod) {
	dir := "nodes/" + pod.Spec.NodeName + "/"
	p := pod.DeepCopy()
	p.ManagedFields = nil
	p.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	d.addYAML(dir+"agent-pod.yaml", p, nil)

	for _, x := range []struct {
		file string
		args []string
	}{
		{"status.json", []string{"status", "-o", "json", "--skip-self-test"}},
		// doctor exits 1 when a check fails: its JSON is what matters.
		{"doctor.json", []string{"doctor", "-o", "json", "--skip-self-test"}},
		{"version.txt", []string{"version"}},
	} {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		args := append([]string{agentCLI, "--bpffs-dir", bpffsDir(pod)}, x.args...)
		out, errOut, err := c.exec(ctx, pod, args...)
		cancel()
		if len(out) > 0 {
			d.add(dir+x.file, out)
		}
		if err != nil && (len(out) == 0 || x.file != "doctor.json") {
			d.fail(dir+x.file, err)
		}
		if len(errOut) > 0 {
			d.add(dir+x.file+".stderr", errOut)
		}
	}

	for _, previous := range []bool{false, true} {
		name := dir + "agent.log"
		if previous {
			name = dir + "agent-previous.log"
			if restarts(pod) == 0 {
				continue
			}
		}
		b, err := c.cs.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{
			Container: agentContainer, Previous: previous, Timestamps: true,
		}).DoRaw(ctx)
		if err != nil {
			d.fail(name, err)
			continue
		}
		d.add(name, b)
	}
}

// collectRelease adds the agents' DaemonSet and the values of the Helm
// release that installed them (from Helm's release Secret).
func collectRelease(ctx context.Context, c *cluster, d *sysdump, agents []corev1.Pod) {
	if len(agents) == 0 {
		return
	}
	for _, ref := range agents[0].OwnerReferences {
		if ref.Kind == "DaemonSet" {
			ds, err := c.cs.AppsV1().DaemonSets(c.namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if ds != nil {
				ds.ManagedFields = nil
				ds.TypeMeta = metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"}
			}
			d.addYAML("cluster/daemonset.yaml", ds, err)
		}
	}
	rel := agents[0].Labels["app.kubernetes.io/instance"]
	if rel == "" {
		d.fail("helm values", fmt.Errorf("agent pod %s has no app.kubernetes.io/instance label", agents[0].Name))
		return
	}
	secrets, err := c.cs.CoreV1().Secrets(c.namespace).List(ctx, metav1.ListOptions{
		LabelSelector: "owner=helm,status=deployed,name=" + rel})
	if err != nil {
		d.fail("helm values of release "+rel, err)
		return
	}
	if len(secrets.Items) == 0 {
		d.fail("helm values of release "+rel, fmt.Errorf("no deployed Helm release secret in %s", c.namespace))
		return
	}
	sort.Slice(secrets.Items, func(i, j int) bool { return secrets.Items[i].Name < secrets.Items[j].Name })
	r, err := decodeRelease(secrets.Items[len(secrets.Items)-1].Data["release"])
	if err != nil {
		d.fail("helm values of release "+rel, err)
		return
	}
	d.addYAML("helm/values.yaml", r.Config, nil)
	d.addYAML("helm/release.yaml", map[string]any{
		"name": r.Name, "namespace": r.Namespace, "revision": r.Version,
		"chart": r.Chart.Metadata, "status": r.Info.Status, "deployed": r.Info.LastDeployed,
	}, nil)
	d.addYAML("helm/chart-defaults.yaml", r.Chart.Values, nil)
}

// helmRelease is the part of a Helm 3 release record the sysdump keeps.
type helmRelease struct {
	Name      string         `json:"name"`
	Namespace string         `json:"namespace"`
	Version   int            `json:"version"`
	Config    map[string]any `json:"config"`
	Info      struct {
		Status       string `json:"status"`
		LastDeployed string `json:"last_deployed"`
	} `json:"info"`
	Chart struct {
		Metadata map[string]any `json:"metadata"`
		Values   map[string]any `json:"values"`
	} `json:"chart"`
}

// decodeRelease decodes the release field of Helm's release Secret:
// base64 of the gzipped JSON record.
func decodeRelease(data []byte) (*helmRelease, error) {
	raw, err := base64.StdEncoding.DecodeString(string(data))
	if err != nil {
		return nil, fmt.Errorf("decode helm release: %w", err)
	}
	if bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("decode helm release: %w", err)
		}
		if raw, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("decode helm release: %w", err)
		}
	}
	var r helmRelease
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("decode helm release: %w", err)
	}
	return &r, nil
}

// write writes the archive: every file under one top directory named
// after the archive, plus errors.txt.
func (d *sysdump) write(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("create %s: %w", file, err)
	}
	top := strings.TrimSuffix(strings.TrimSuffix(path.Base(file), ".gz"), ".tar")
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	errs := strings.Join(d.errs, "\n")
	if errs != "" {
		errs += "\n"
	}
	d.files["errors.txt"] = []byte(errs)
	names := make([]string, 0, len(d.files))
	for n := range d.files {
		names = append(names, n)
	}
	sort.Strings(names)
	now := time.Now()
	for _, n := range names {
		b := d.files[n]
		if err := tw.WriteHeader(&tar.Header{Name: top + "/" + n, Mode: 0o644, Size: int64(len(b)), ModTime: now}); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", file, err)
		}
		if _, err := tw.Write(b); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", file, err)
		}
	}
	for _, cl := range []io.Closer{tw, gz, f} {
		if err := cl.Close(); err != nil {
			return fmt.Errorf("write %s: %w", file, err)
		}
	}
	return nil
}
