// Tests of the chart's Grafana dashboard and Prometheus alerts: the objects
// they render to, that every query names a metric the agent exports (or one
// marked optional), and, with Prometheus' own promtool, that every query parses
// and returns series on the agent's real metrics and that each alert fires
// when it should and only then.
package chart_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/metrics"
)

// optionalMetrics are metrics the dashboard and the alerts read although
// today's agent does not export them: their panels stay empty and their
// alerts silent until it does. Each is documented where it is used.
var optionalMetrics = map[string]string{}

// alertNames are the chart's alerts.
var alertNames = []string{
	"SockhopDatapathNotReady", "SockhopAttachFailures", "SockhopDatapathErrors",
	"SockhopMapNearFull", "SockhopReceiverStranded", "SockhopHazardGuardsTripping",
}

type grafanaDashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID          int    `json:"id"`
		Type        string `json:"type"`
		Title       string `json:"title"`
		Description string `json:"description"`
		Datasource  struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// query is one PromQL expression of the dashboard or the rules.
type query struct {
	where string // panel title and refId, or alert name
	expr  string
}

func dashboardConfigMap(t *testing.T, vals map[string]any) *objects {
	t.Helper()
	objs := mustRender(t, vals)
	if len(objs.configMaps) != 1 {
		t.Fatalf("objects = %v, want one dashboard ConfigMap", objs.kinds)
	}
	return objs
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	objs := dashboardConfigMap(t, map[string]any{"dashboards": map[string]any{"enabled": true}})
	raw, ok := objs.configMaps[0].Data["sockhop.json"]
	if !ok {
		t.Fatalf("dashboard ConfigMap data keys = %v, want sockhop.json", objs.configMaps[0].Data)
	}
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard JSON in the ConfigMap: %v", err)
	}
	return d
}

func TestDashboardConfigMap(t *testing.T) {
	if objs := mustRender(t, nil); len(objs.configMaps) != 0 || objs.prometheusRule != nil {
		t.Fatalf("default objects %v include a dashboard or rules (both are off by default)", objs.kinds)
	}
	cm := dashboardConfigMap(t, map[string]any{"dashboards": map[string]any{"enabled": true}}).configMaps[0]
	if cm.Namespace != namespace || cm.Labels["grafana_dashboard"] != "1" || cm.Labels["app.kubernetes.io/name"] != "sockhop" {
		t.Errorf("ConfigMap %s/%s labels %v: want namespace %s and grafana_dashboard=1", cm.Namespace, cm.Name, cm.Labels, namespace)
	}
	want, err := os.ReadFile("dashboards/sockhop.json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(cm.Data["sockhop.json"]) != strings.TrimSpace(string(want)) {
		t.Errorf("ConfigMap does not carry dashboards/sockhop.json verbatim")
	}

	cm = dashboardConfigMap(t, map[string]any{"dashboards": map[string]any{
		"enabled": true, "label": "example.com/dashboard", "labelValue": "sockhop",
		"namespace": "monitoring", "annotations": map[string]any{"grafana_folder": "Networking"},
	}}).configMaps[0]
	if cm.Namespace != "monitoring" || cm.Labels["example.com/dashboard"] != "sockhop" ||
		cm.Labels["grafana_dashboard"] != "" || cm.Annotations["grafana_folder"] != "Networking" {
		t.Errorf("ConfigMap %s labels %v annotations %v: values not applied", cm.Namespace, cm.Labels, cm.Annotations)
	}
}

func TestDashboardPanels(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q: both are needed for a stable link", d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["node"] != "query" {
		t.Errorf("template variables %v: want datasource (datasource) and node (query)", vars)
	}
	ids := map[int]bool{}
	var titles []string
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		titles = append(titles, p.Title)
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q data source %q, want ${datasource}", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if !strings.Contains(q.Expr, `node=~"$node"`) {
				t.Errorf("panel %q query %s: does not follow the node variable", p.Title, q.RefID)
			}
		}
		for name, what := range optionalMetrics {
			if panelUses(p.Targets, name) && !strings.Contains(p.Description, name) {
				t.Errorf("panel %q reads the optional %s (%s) without saying so in its description", p.Title, name, what)
			}
		}
	}
	for _, want := range []string{
		"Redirected vs TCP bytes per node", "Passthrough by reason", "Attach latency",
		"Datapath ready", "Datapath errors by operation", "Map pressure", "Receiver guard events",
	} {
		if !slices.Contains(titles, want) {
			t.Errorf("no panel %q among %q", want, titles)
		}
	}
}

func panelUses(targets []struct {
	RefID string `json:"refId"`
	Expr  string `json:"expr"`
}, metric string) bool {
	for _, q := range targets {
		if slices.Contains(metricNames(q.Expr), metric) {
			return true
		}
	}
	return false
}

// dashboardQueries are the dashboard's expressions with Grafana's variables
// replaced as Grafana would: all nodes, a 5m rate interval.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	d := loadDashboard(t)
	var qs []query
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			// label_values(METRIC, LABEL) is Grafana's, not PromQL: keep its metric.
			s, _ := q["query"].(string)
			if m := regexp.MustCompile(`^label_values\(([a-z_:]+), *[a-z_]+\)$`).FindStringSubmatch(s); m != nil {
				qs = append(qs, query{"variable " + v.Name, m[1]})
			} else {
				t.Errorf("variable %s: query %q is not label_values(METRIC, LABEL)", v.Name, s)
			}
		}
	}
	r := strings.NewReplacer("$__rate_interval", "5m", `"$node"`, `".*"`)
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			qs = append(qs, query{p.Title + " " + q.RefID, r.Replace(q.Expr)})
		}
	}
	return qs
}

// ruleQueries are the expressions of the rendered alerts, by alert name.
func ruleQueries(t *testing.T, vals map[string]any) []query {
	t.Helper()
	var qs []query
	for _, r := range renderedRules(t, vals) {
		qs = append(qs, query{r["alert"].(string), r["expr"].(string)})
	}
	return qs
}

var metricName = regexp.MustCompile(`\bsockhop_[a-z_]+\b`)

func metricNames(expr string) []string { return metricName.FindAllString(expr, -1) }

// exported are the names of the series today's agent exposes, with every
// metric in use, gathered from pkg/metrics as the agent registers it.
func exported(t *testing.T) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m := metrics.New("v0.0.0-test")
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.SetCounterSource(fixedCounters{})
	m.SetReadiness(func() bool { return true })
	m.SetPodsAccelerated(3)
	m.Attached(20 * time.Millisecond)
	m.AttachFailed()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

type fixedCounters struct{}

func (fixedCounters) MapFill() ([]datapath.MapFill, error) {
	return []datapath.MapFill{{Name: "sockhash", Entries: 8, Capacity: 262144}, {Name: "pending", Entries: 1, Capacity: 131072}}, nil
}

func (fixedCounters) Counters() (datapath.Counters, error) {
	return datapath.Counters{
		PairedSockets: 8, RedirectedMessages: 100, RedirectedBytes: 64 << 10, TCPMessages: 4, TCPBytes: 4096,
		Switches: 6, UnsafeReceivers: 1, Stranded: 1, Retired: 2,
		Passthrough: map[string]uint64{datapath.ReasonRemote: 5, datapath.ReasonBackpressure: 1},
		MapErrors:   map[string]uint64{"sockhash": 1},
	}, nil
}

// seriesNames are the names of the series of the families (a histogram's
// _bucket, _sum and _count).
func seriesNames(fams []*dto.MetricFamily) map[string]bool {
	names := map[string]bool{}
	for _, f := range fams {
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
			continue
		}
		names[f.GetName()] = true
	}
	return names
}

// TestQueriesUseExportedMetrics catches a renamed or removed metric, and a
// metric that no panel shows.
func TestQueriesUseExportedMetrics(t *testing.T) {
	fams := exported(t)
	have := seriesNames(fams)
	shown := map[string]bool{}
	qs := append(dashboardQueries(t), ruleQueries(t, nil)...)
	for _, q := range qs {
		names := metricNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: %q reads no sockhop metric", q.where, q.expr)
		}
		for _, n := range names {
			shown[strings.TrimSuffix(n, "_bucket")] = true
			if !have[n] && optionalMetrics[n] == "" {
				t.Errorf("%s reads %s, which the agent does not export (exported: %v)", q.where, n, sortedSet(have))
			}
		}
	}
	for _, f := range fams {
		if !shown[f.GetName()] {
			t.Errorf("the agent exports %s but no dashboard panel or alert reads it", f.GetName())
		}
	}
}

func sortedSet(m map[string]bool) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

func TestPrometheusRule(t *testing.T) {
	objs := mustRender(t, map[string]any{"prometheusRule": map[string]any{
		"enabled": true, "labels": map[string]any{"release": "kube-prometheus"},
		"alertLabels": map[string]any{"team": "platform"},
	}})
	pr := objs.prometheusRule
	if pr == nil {
		t.Fatalf("objects = %v, want a PrometheusRule", objs.kinds)
	}
	if dig(pr, "metadata", "namespace") != namespace || dig(pr, "metadata", "labels", "release") != "kube-prometheus" {
		t.Errorf("PrometheusRule metadata = %v", dig(pr, "metadata"))
	}
	var names []string
	for _, r := range rulesOf(t, pr) {
		names = append(names, r["alert"].(string))
		if dig(r, "labels", "team") != "platform" || dig(r, "labels", "severity") == nil {
			t.Errorf("%s: labels %v, want severity and team=platform", r["alert"], r["labels"])
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if s, _ := dig(r, "annotations", a).(string); s == "" {
				t.Errorf("%s: no %s annotation", r["alert"], a)
			}
		}
		if s, _ := dig(r, "annotations", "summary").(string); !strings.Contains(s, "{{ $labels.node }}") {
			t.Errorf("%s: summary %q does not name the node", r["alert"], s)
		}
	}
	if !slices.Equal(names, alertNames) {
		t.Errorf("alerts = %v, want %v", names, alertNames)
	}

	rules := renderedRules(t, map[string]any{
		"disabled": []any{"SockhopMapNearFull"}, "mapPressureThreshold": 0.8,
		"hazardGuards": map[string]any{"reasons": []any{"backpressure", "stranded"}, "factor": 5, "minPerSecond": 0.5},
	})
	names = nil
	for _, r := range rules {
		names = append(names, r["alert"].(string))
		if r["alert"] == "SockhopHazardGuardsTripping" {
			expr := r["expr"].(string)
			for _, want := range []string{`reason=~"backpressure|stranded"`, "> 5 *", "> 0.5"} {
				if !strings.Contains(expr, want) {
					t.Errorf("hazard alert %q lacks %q", expr, want)
				}
			}
		}
	}
	if slices.Contains(names, "SockhopMapNearFull") || len(names) != len(alertNames)-1 {
		t.Errorf("alerts with SockhopMapNearFull disabled = %v", names)
	}
}

// renderedRules are the rules of the PrometheusRule rendered with vals as
// prometheusRule values (enabled).
func renderedRules(t *testing.T, vals map[string]any) []map[string]any {
	t.Helper()
	v := map[string]any{"enabled": true}
	for k, x := range vals {
		v[k] = x
	}
	objs := mustRender(t, map[string]any{"prometheusRule": v})
	if objs.prometheusRule == nil {
		t.Fatalf("objects = %v, want a PrometheusRule", objs.kinds)
	}
	return rulesOf(t, objs.prometheusRule)
}

func rulesOf(t *testing.T, pr map[string]any) []map[string]any {
	t.Helper()
	groups, _ := dig(pr, "spec", "groups").([]any)
	var rules []map[string]any
	for _, g := range groups {
		rs, _ := dig(g, "rules").([]any)
		for _, r := range rs {
			rules = append(rules, r.(map[string]any))
		}
	}
	if len(rules) == 0 {
		t.Fatalf("PrometheusRule has no rules: %v", pr)
	}
	return rules
}

// promtool is the path of Prometheus' promtool (Debian's prometheus package,
// installed by hack/deps.sh). Without it a -short run skips; a full run fails.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if testing.Short() {
			t.Skip("promtool not installed (hack/deps.sh installs Debian's prometheus package)")
		}
		t.Fatal("promtool not found: run hack/deps.sh (Debian package prometheus)")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// writeRules writes the PrometheusRule's groups as a Prometheus rule file.
func writeRules(t *testing.T, path string, vals map[string]any, annotations bool) {
	t.Helper()
	rules := renderedRules(t, vals)
	if !annotations {
		for _, r := range rules {
			delete(r, "annotations")
		}
	}
	raw, err := sigsyaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "sockhop", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestAlertRules checks the rendered rules with promtool and runs the alert
// unit tests of testdata/alerts_test.yaml on them.
func TestAlertRules(t *testing.T) {
	dir := t.TempDir()
	writeRules(t, filepath.Join(dir, "full.yaml"), nil, true)
	if out, err := runPromtool(t, dir, "check", "rules", "full.yaml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	tests, err := os.ReadFile("testdata/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range alertNames {
		if !strings.Contains(string(tests), "alertname: "+n) {
			t.Errorf("testdata/alerts_test.yaml does not test %s", n)
		}
	}
	writeRules(t, filepath.Join(dir, "rules.yaml"), nil, false)
	out, err := runPromtool(t, dir, "test", "rules", "alerts_test.yaml")
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules:\n%s", out)

	// The same tests must fail when a threshold changes: they are not vacuous.
	writeRules(t, filepath.Join(dir, "rules.yaml"), map[string]any{"mapPressureThreshold": 0.99}, false)
	if out, err := runPromtool(t, dir, "test", "rules", "alerts_test.yaml"); err == nil || !strings.Contains(out, "SockhopMapNearFull") {
		t.Errorf("promtool test rules passed with mapPressureThreshold 0.99 (want a SockhopMapNearFull failure): %v\n%s", err, out)
	}
}

// TestDashboardQueriesReturnSeries makes promtool parse every dashboard
// query and evaluate it on series shaped as the agent exports them (two
// nodes, the node label the monitors add): each one must return data.
func TestDashboardQueriesReturnSeries(t *testing.T) {
	dir := t.TempDir()
	qs := dashboardQueries(t)
	var rules []any
	var checks []any
	for i, q := range qs {
		name := fmt.Sprintf("DashboardQuery%02dEmpty", i)
		rules = append(rules, map[string]any{"alert": name, "expr": "absent(" + q.expr + ")", "labels": map[string]any{"query": q.where}})
		checks = append(checks, map[string]any{"eval_time": "20m", "alertname": name, "exp_alerts": []any{}})
	}
	// A control that must fire: a check that cannot fail would prove nothing.
	rules = append(rules, map[string]any{"alert": "ControlEmpty", "expr": "absent(sockhop_no_such_metric)"})
	checks = append(checks, map[string]any{"eval_time": "20m", "alertname": "ControlEmpty",
		"exp_alerts": []any{map[string]any{"exp_labels": map[string]any{}}}})

	ruleFile, err := sigsyaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	testFile, err := sigsyaml.Marshal(map[string]any{
		"rule_files":          []any{"dashboard_rules.yaml"},
		"evaluation_interval": "1m",
		"tests": []any{map[string]any{
			"interval": "1m", "input_series": inputSeries(exported(t), "node-a", "node-b"), "alert_rule_test": checks,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"dashboard_rules.yaml": ruleFile, "dashboard_test.yaml": testFile} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := runPromtool(t, dir, "check", "rules", "dashboard_rules.yaml"); err != nil {
		t.Fatalf("a dashboard query does not parse: %v\n%s", err, out)
	}
	if out, err := runPromtool(t, dir, "test", "rules", "dashboard_test.yaml"); err != nil {
		t.Fatalf("a dashboard query returns no series (its query label names it): %v\n%s", err, out)
	}
}

// inputSeries are promtool input series for the gathered families, on each
// node: counters and histograms grow by their gathered value every minute,
// gauges keep theirs; the optional metrics are added as a later agent would
// export them.
func inputSeries(fams []*dto.MetricFamily, nodes ...string) []any {
	var series []any
	add := func(name string, labels map[string]string, values string) {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%q", k, labels[k]))
		}
		series = append(series, map[string]any{"series": name + "{" + strings.Join(parts, ",") + "}", "values": values})
	}
	grow := func(v float64) string { return fmt.Sprintf("0+%gx30", max(v, 1)) }
	for _, node := range nodes {
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				labels := map[string]string{"node": node}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				switch f.GetType() {
				case dto.MetricType_COUNTER:
					add(f.GetName(), labels, grow(m.GetCounter().GetValue()))
				case dto.MetricType_GAUGE:
					add(f.GetName(), labels, fmt.Sprintf("%gx30", m.GetGauge().GetValue()))
				case dto.MetricType_HISTOGRAM:
					h := m.GetHistogram()
					for _, b := range h.GetBucket() {
						bl := map[string]string{"le": fmt.Sprint(b.GetUpperBound())}
						for k, v := range labels {
							bl[k] = v
						}
						add(f.GetName()+"_bucket", bl, grow(float64(b.GetCumulativeCount())))
					}
					inf := map[string]string{"le": "+Inf"}
					for k, v := range labels {
						inf[k] = v
					}
					add(f.GetName()+"_bucket", inf, grow(float64(h.GetSampleCount())))
					add(f.GetName()+"_sum", labels, grow(h.GetSampleSum()))
					add(f.GetName()+"_count", labels, grow(float64(h.GetSampleCount())))
				}
			}
		}
		add("sockhop_tcp_bytes_total", map[string]string{"node": node}, grow(4096))
	}
	return series
}
