package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// optionalMetrics are read by the dashboard and the alerts although today's
// agent does not export them (charts/sockhop/monitoring_test.go has the same
// list): their queries must parse but may return nothing.
var optionalMetrics = map[string]bool{}

// checkPrometheus runs Debian's Prometheus server in the cluster's network
// namespace, scraping the agents as the chart's PodMonitor describes them and
// evaluating the chart's PrometheusRule, and checks on it every metric the
// README lists, every dashboard query and every alert rule.
func (c *cluster) checkPrometheus(t *testing.T, node string) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus not found: hack/deps.sh installs Debian's prometheus package")
	}
	monitor, rule := renderMonitoring(t)
	dir := t.TempDir()
	cfg := scrapeConfig(t, monitor)
	writeYAML(t, filepath.Join(dir, "prometheus.yml"), cfg)
	c.discoverPods(t, filepath.Join(dir, "targets.json"), dig(monitor, "spec", "namespaceSelector", "matchNames").([]any))
	writeYAML(t, filepath.Join(dir, "rules.yml"), map[string]any{"groups": dig(rule, "spec", "groups")})
	prom := startPrometheus(t, bin, dir)

	// The agent is up, labelled with its node, as the monitor's relabeling says.
	waitFor(t, time.Minute, "the agent scraped", func() error {
		r, err := prom.query(`up{node="` + node + `"} == 1`)
		if err == nil && len(r) == 0 {
			err = errors.New("no agent target up")
		}
		return err
	})
	// Rates need a few samples.
	time.Sleep(6 * time.Second)

	t.Run("every metric the README lists has data", func(t *testing.T) {
		names := readmeMetrics(t)
		if len(names) < 9 {
			t.Fatalf("README lists only %v", names)
		}
		for _, n := range names {
			r, err := prom.query(fmt.Sprintf(`count({__name__=~"%s|%s_count", node=%q})`, n, n, node))
			if err != nil || len(r) == 0 {
				t.Errorf("%s: not scraped (%v)", n, err)
			}
		}
	})

	t.Run("every dashboard query parses and returns series", func(t *testing.T) {
		raw, err := os.ReadFile("../charts/sockhop/dashboards/sockhop.json")
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		grafana := strings.NewReplacer("$__rate_interval", "30s", `"$node"`, `".*"`)
		n := 0
		for _, p := range d.Panels {
			for _, q := range p.Targets {
				n++
				expr := grafana.Replace(q.Expr)
				r, err := prom.query(expr)
				switch {
				case err != nil:
					t.Errorf("panel %q: %s: %v", p.Title, expr, err)
				case len(r) == 0 && !readsOptional(expr):
					t.Errorf("panel %q: %s returns no series", p.Title, expr)
				case len(r) == 0:
					t.Logf("panel %q: %s is empty (it reads a metric the agent does not export yet)", p.Title, expr)
				}
			}
		}
		if n < 10 {
			t.Errorf("only %d dashboard queries", n)
		}
	})

	t.Run("every alert rule evaluates, reads scraped series, and is quiet", func(t *testing.T) {
		var rules []map[string]any
		waitFor(t, 30*time.Second, "the rules evaluated", func() error {
			var err error
			if rules, err = prom.rules(); err != nil {
				return err
			}
			for _, r := range rules {
				if r["lastEvaluation"] == "0001-01-01T00:00:00Z" {
					return fmt.Errorf("%s not evaluated yet", r["name"])
				}
			}
			return nil
		})
		if len(rules) != 6 {
			t.Errorf("%d rules loaded, want the chart's 6", len(rules))
		}
		for _, r := range rules {
			name, expr := r["name"].(string), r["query"].(string)
			if r["health"] != "ok" || r["lastError"] != nil && r["lastError"] != "" {
				t.Errorf("%s: health %v, error %v", name, r["health"], r["lastError"])
			}
			if r["state"] != "inactive" {
				t.Errorf("%s is %v on a healthy cluster", name, r["state"])
			}
			for _, sel := range selectors(expr) {
				if readsOptional(sel) {
					continue
				}
				if res, err := prom.query(sel); err != nil || len(res) == 0 {
					t.Errorf("%s reads %s, which returns no series (%v)", name, sel, err)
				}
			}
		}
	})
}

// renderMonitoring renders the chart's PodMonitor and PrometheusRule with helm.
func renderMonitoring(t *testing.T) (monitor, rule map[string]any) {
	t.Helper()
	chart, _ := filepath.Abs("../charts/sockhop")
	out, err := exec.Command("helm", "template", release, chart, "-n", sockhopNS,
		"--set", "podMonitor.enabled=true", "--set", "podMonitor.interval=1s",
		"--set", "prometheusRule.enabled=true").Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := sigsyaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		switch obj["kind"] {
		case "PodMonitor":
			monitor = obj
		case "PrometheusRule":
			rule = obj
		}
	}
	if monitor == nil || rule == nil {
		t.Fatalf("helm template rendered no PodMonitor or PrometheusRule:\n%s", out)
	}
	return monitor, rule
}

var nonLabelChar = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// scrapeConfig translates a PodMonitor into the scrape configuration the
// Prometheus Operator generates for it: pods of the monitor's namespaces,
// kept by its label selector and port name, then its own relabelings.
//
// Debian's Prometheus is built without Kubernetes service discovery, so the
// pods come from a file (discoverPods) carrying the same __meta_kubernetes_pod_*
// labels kubernetes_sd_configs gives them: selection and relabeling are still
// Prometheus' own, from the monitor.
func scrapeConfig(t *testing.T, pm map[string]any) map[string]any {
	t.Helper()
	var relabel []any
	for k, v := range dig(pm, "spec", "selector", "matchLabels").(map[string]any) {
		l := nonLabelChar.ReplaceAllString(k, "_")
		relabel = append(relabel, map[string]any{
			"action": "keep", "regex": fmt.Sprintf("(%s);true", v),
			"source_labels": []string{"__meta_kubernetes_pod_label_" + l, "__meta_kubernetes_pod_labelpresent_" + l},
		})
	}
	if exprs := dig(pm, "spec", "selector", "matchExpressions"); exprs != nil {
		t.Fatalf("PodMonitor selector has matchExpressions, which this translation does not handle: %v", exprs)
	}
	eps := dig(pm, "spec", "podMetricsEndpoints").([]any)
	if len(eps) != 1 {
		t.Fatalf("PodMonitor has %d endpoints, want 1", len(eps))
	}
	ep := eps[0].(map[string]any)
	relabel = append(relabel,
		map[string]any{"action": "keep", "regex": ep["port"], "source_labels": []string{"__meta_kubernetes_pod_container_port_name"}},
		map[string]any{"action": "replace", "target_label": "__metrics_path__", "replacement": ep["path"]},
	)
	for _, r := range ep["relabelings"].([]any) {
		m := r.(map[string]any)
		out := map[string]any{}
		for k, v := range m {
			switch k {
			case "sourceLabels":
				out["source_labels"] = v
			case "targetLabel":
				out["target_label"] = v
			default:
				out[k] = v
			}
		}
		relabel = append(relabel, out)
	}
	interval := "1s"
	if v, ok := ep["interval"].(string); ok && v != "" {
		interval = v
	}
	return map[string]any{
		"global":     map[string]any{"scrape_interval": interval, "evaluation_interval": "1s"},
		"rule_files": []string{"rules.yml"},
		"scrape_configs": []any{map[string]any{
			"job_name":        fmt.Sprintf("podMonitor/%s/%s/0", sockhopNS, dig(pm, "metadata", "name")),
			"file_sd_configs": []any{map[string]any{"files": []string{"targets.json"}, "refresh_interval": "5s"}},
			"relabel_configs": relabel,
		}},
	}
}

// discoverPods writes, as file_sd targets, one target per container port of
// every running pod in the namespaces, labelled as Prometheus' Kubernetes pod
// discovery labels it.
func (c *cluster) discoverPods(t *testing.T, file string, namespaces []any) {
	t.Helper()
	var groups []any
	for _, ns := range namespaces {
		pods, err := c.cs.CoreV1().Pods(ns.(string)).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
				continue
			}
			base := map[string]string{
				"__meta_kubernetes_namespace":     p.Namespace,
				"__meta_kubernetes_pod_name":      p.Name,
				"__meta_kubernetes_pod_ip":        p.Status.PodIP,
				"__meta_kubernetes_pod_node_name": p.Spec.NodeName,
				"__meta_kubernetes_pod_phase":     string(p.Status.Phase),
			}
			for k, v := range p.Labels {
				l := nonLabelChar.ReplaceAllString(k, "_")
				base["__meta_kubernetes_pod_label_"+l] = v
				base["__meta_kubernetes_pod_labelpresent_"+l] = "true"
			}
			for _, ctr := range p.Spec.Containers {
				for _, port := range ctr.Ports {
					labels := map[string]string{
						"__meta_kubernetes_pod_container_name":        ctr.Name,
						"__meta_kubernetes_pod_container_port_name":   port.Name,
						"__meta_kubernetes_pod_container_port_number": strconv.Itoa(int(port.ContainerPort)),
					}
					for k, v := range base {
						labels[k] = v
					}
					groups = append(groups, map[string]any{
						"targets": []string{net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(port.ContainerPort)))},
						"labels":  labels,
					})
				}
			}
		}
	}
	b, err := json.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := sigsyaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

type prometheus struct{ base string }

// startPrometheus starts the server on a free loopback port of the cluster's
// network namespace; it is killed when the test ends.
func startPrometheus(t *testing.T, bin, dir string) *prometheus {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var log bytes.Buffer
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log.String())
		}
	})
	p := &prometheus{base: "http://" + addr}
	waitFor(t, 30*time.Second, "prometheus ready", func() error {
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})
	return p
}

// query runs an instant query; a parse or evaluation error is an error.
func (p *prometheus) query(expr string) ([]any, error) {
	var res struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []any `json:"result"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/query?query="+url.QueryEscape(expr), &res); err != nil {
		return nil, err
	}
	if res.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", expr, res.Error)
	}
	return res.Data.Result, nil
}

// rules lists the loaded rules.
func (p *prometheus) rules() ([]map[string]any, error) {
	var res struct {
		Data struct {
			Groups []struct {
				Rules []map[string]any `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/rules", &res); err != nil {
		return nil, err
	}
	var out []map[string]any
	for _, g := range res.Data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

func (p *prometheus) get(path string, into any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(into)
}

func waitFor(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

var (
	metricRef = regexp.MustCompile(`\bsockhop_[a-z_]+\b`)
	// selectorRef is a metric with its label matchers, as the rules write them.
	selectorRef = regexp.MustCompile(`\bsockhop_[a-z_]+(\{[^}]*\})?`)
)

func readsOptional(expr string) bool {
	for _, m := range metricRef.FindAllString(expr, -1) {
		if optionalMetrics[m] {
			return true
		}
	}
	return false
}

func selectors(expr string) []string { return selectorRef.FindAllString(expr, -1) }

// readmeMetrics are the metric names of the README's "What it tells you".
func readmeMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	start := strings.Index(s, "## What it tells you")
	if start < 0 {
		t.Fatal("README has no section \"What it tells you\"")
	}
	s = s[start:]
	if end := strings.Index(s[3:], "\n## "); end >= 0 {
		s = s[:end+3]
	}
	// The metrics bullet: from "Prometheus metrics" to the next bullet.
	i := strings.Index(s, "Prometheus metrics")
	if i < 0 {
		t.Fatal("README's \"What it tells you\" lists no Prometheus metrics")
	}
	s = s[i:]
	if end := strings.Index(s, "\n- "); end >= 0 {
		s = s[:end]
	}
	seen := map[string]bool{}
	var names []string
	for _, m := range metricRef.FindAllString(s, -1) {
		if !seen[m] {
			seen[m] = true
			names = append(names, m)
		}
	}
	return names
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}
