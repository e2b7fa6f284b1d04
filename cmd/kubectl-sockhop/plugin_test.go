package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sockhop/sockhop/controllers"
	"github.com/sockhop/sockhop/pkg/cliout"
)

// TestAgreesWithAgent checks the plugin's copy of the agent's rule and
// names against package controllers, which the plugin does not link.
func TestAgreesWithAgent(t *testing.T) {
	if namespaceLabelKey != controllers.DefaultNamespaceLabelKey || namespaceLabelValue != controllers.DefaultNamespaceLabelValue ||
		annotationAccel != controllers.AnnotationAccelerate {
		t.Errorf("label/annotation names differ from package controllers")
	}
	for _, r := range []string{controllers.ReasonAccelerated, controllers.ReasonAccelerationRemoved, controllers.ReasonAccelerationFailed,
		controllers.ReasonAccelerating, controllers.ReasonNotAccelerating} {
		if !sockhopReasons[r] {
			t.Errorf("Event reason %s of the agent is not collected", r)
		}
	}
	// The receiver guard's reasons are literals in controllers/hazards.go.
	src, err := os.ReadFile("../../controllers/hazards.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{reasonHazardousReader, reasonReceiverStranded} {
		if !strings.Contains(string(src), `"`+r+`"`) {
			t.Errorf("controllers/hazards.go records no Event %s", r)
		}
	}
	if len(sockhopReasons) != 7 {
		t.Errorf("sockhopReasons = %v", sockhopReasons)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{namespaceLabelKey: namespaceLabelValue}}}
	sel := controllers.NamespaceSelector{Key: namespaceLabelKey, Value: namespaceLabelValue}
	for name, p := range map[string]*corev1.Pod{
		"running":      {Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		"pending":      {Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodPending}},
		"succeeded":    {Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodSucceeded}},
		"failed":       {Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodFailed}},
		"host network": {Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true}},
		"opted out":    {ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annotationAccel: "disabled"}}, Spec: corev1.PodSpec{NodeName: "n1"}},
		"enabled":      {ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annotationAccel: "enabled"}}, Spec: corev1.PodSpec{NodeName: "n1"}},
	} {
		p.Namespace = ns.Name
		want, _ := controllers.Wanted(p, ns, sel, p.Spec.NodeName)
		if got := wanted(p); got != want {
			t.Errorf("%s: wanted = %v, the agent says %v", name, got, want)
		}
	}
}

func TestPodReady(t *testing.T) {
	ready := &corev1.Pod{Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
	if ok, why := podReady(ready); !ok || why != "" {
		t.Errorf("ready pod: %v %q", ok, why)
	}
	crash := &corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
		Name: agentContainer, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 5m0s"}}}}}}
	if ok, why := podReady(crash); ok || why != "CrashLoopBackOff back-off 5m0s" {
		t.Errorf("crashing pod: %v %q", ok, why)
	}
	notReady := &corev1.Pod{Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady"}}}}
	if ok, why := podReady(notReady); ok || why != "ContainersNotReady" {
		t.Errorf("not ready pod: %v %q", ok, why)
	}
}

func testStatus() *clusterStatus {
	rows := []nodeRow{
		{Node: "n1", Agent: "sockhop-abcde", Ready: true, Receivers: "proxies", Programs: "sockops aa, sk_msg bb", BacklogLimit: 3 << 20,
			PodsAccelerated: 2, PodsOptedIn: 3, RedirectedBytes: 5 << 20, TCPBytes: 2048,
			Passthrough: map[string]uint64{"remote": 4, "backpressure": 1}, SocketsInSockhash: 4, GuardTrips: 1,
			Maps:            []mapFill{{"sockhash", 4, 262144}, {"pending", 100, 131072}, {"receivers", 0, 0}},
			UnsafeReceivers: 2, Stranded: 1},
		{Node: "n2", NotReady: "no agent pod on this node"},
	}
	return &clusterStatus{Nodes: rows, Summary: summary(rows), Pods: []podRow{
		{Namespace: "shop", Pod: "web-0", Node: "n1", Accelerated: true, ExcludePorts: []uint16{5432}, EventReason: "Accelerated", EventMessage: "attached",
			Stats: &podStats{Connections: 12, Directions: 24, Redirected: 20, OnTCP: map[string]uint64{"backpressure": 2, "unsafe_receiver": 2},
				Unpaired: map[string]uint64{"remote": 14}}, Summary: "12 connections paired, 20 of 24 directions redirected"},
		{Namespace: "shop", Pod: "web-1", Node: "n1", ExcludePorts: []uint16{}},
	}}
}

func TestWriteStatus(t *testing.T) {
	st := testStatus()
	if want := "2 node(s), 1 agent(s) ready; 2 of 3 opted-in pod(s) accelerated; 5.0 MiB redirected, 2.0 KiB of paired sockets over TCP; 1 guard trip(s)"; st.Summary != want {
		t.Errorf("summary = %q, want %q", st.Summary, want)
	}
	var b bytes.Buffer
	if err := writeStatus(&b, st, "table", true); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"NODE  AGENT", "n1    ready", "2/3", "5.0 MiB", "backpressure=1 remote=4", "HAZARDS SEEN", "stranded=1 unsafe=2", "pending 100/131072",
		"n2    not ready: no agent pod on this node", st.Summary,
		"CONNECTIONS  DIRECTIONS REDIRECTED  ON TCP FOR GOOD", "Accelerated: attached",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PROGRAMS") {
		t.Errorf("the default table has the wide columns:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		want := ""
		switch {
		case strings.Contains(line, "web-0"):
			want = "shop web-0 n1 yes 12 20 of 24 backpressure=2 unsafe_receiver=2 remote=14 5432 Accelerated: attached"
		case strings.Contains(line, "web-1"):
			want = "shop web-1 n1 no - - - - - -"
		default:
			continue
		}
		if got := strings.Join(strings.Fields(line), " "); got != want {
			t.Errorf("pod row %q, want %q", got, want)
		}
	}
	b.Reset()
	if err := writeStatus(&b, st, "wide", false); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "sockops aa, sk_msg bb") || !strings.Contains(out, "3.0 MiB") || strings.Contains(out, "web-0") {
		t.Errorf("wide table without pods:\n%s", out)
	}
	for _, format := range []string{"json", "yaml"} {
		b.Reset()
		if err := writeStatus(&b, st, format, true); err != nil {
			t.Fatal(err)
		}
		var got clusterStatus
		if err := sigsyaml.Unmarshal(b.Bytes(), &got); err != nil {
			t.Fatalf("%s: %v\n%s", format, err, b.String())
		}
		if len(got.Nodes) != 2 || got.Nodes[0].RedirectedBytes != 5<<20 || got.Pods[0].ExcludePorts[0] != 5432 || got.Summary != st.Summary ||
			got.Pods[0].Stats == nil || got.Pods[0].Stats.Redirected != 20 || got.Pods[0].Stats.OnTCP["backpressure"] != 2 || got.Pods[1].Stats != nil {
			t.Errorf("%s round trip: %+v", format, got)
		}
	}
}

func TestDecodeRelease(t *testing.T) {
	rec := map[string]any{"name": "sockhop", "namespace": "sockhop-system", "version": 3,
		"config": map[string]any{"logLevel": "debug"}, "info": map[string]any{"status": "deployed"},
		"chart": map[string]any{"metadata": map[string]any{"version": "0.1.0"}, "values": map[string]any{"logLevel": "info"}}}
	raw, _ := json.Marshal(rec)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	r, err := decodeRelease([]byte(base64.StdEncoding.EncodeToString(gz.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "sockhop" || r.Version != 3 || r.Config["logLevel"] != "debug" || r.Chart.Values["logLevel"] != "info" || r.Info.Status != "deployed" {
		t.Errorf("decoded %+v", r)
	}
	if _, err := decodeRelease([]byte("not base64!")); err == nil {
		t.Error("garbage decoded")
	}
}

func TestSysdumpArchive(t *testing.T) {
	d := &sysdump{files: map[string][]byte{}}
	d.add("nodes/n1/status.json", []byte(`{"a":1}`))
	d.fail("nodes/n1/agent-previous.log", io.ErrUnexpectedEOF)
	file := filepath.Join(t.TempDir(), "sockhop-sysdump-x.tar.gz")
	if err := d.write(file); err != nil {
		t.Fatal(err)
	}
	got := readArchive(t, file)
	if string(got["sockhop-sysdump-x/nodes/n1/status.json"]) != `{"a":1}` ||
		!strings.Contains(string(got["sockhop-sysdump-x/errors.txt"]), "agent-previous.log: unexpected EOF") || len(got) != 2 {
		t.Errorf("archive = %v", got)
	}
}

func readArchive(t *testing.T, file string) map[string][]byte {
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
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	cmd := newRootCommand(&out, &errOut)
	cmd.SetArgs([]string{"status", "-o", "xml"})
	var ue *cliout.UsageError
	if err := cliout.Execute(cmd, &errOut); err == nil || !errors.As(err, &ue) {
		t.Errorf("-o xml: err = %v, want a usage error", err)
	}
	// The hint names the command as the user typed it.
	if hint := "Run 'kubectl sockhop status --help' for usage."; !strings.Contains(errOut.String(), hint) {
		t.Errorf("a usage error must end with %q: %q", hint, errOut.String())
	}
	cmd = newRootCommand(&out, &errOut)
	cmd.SetArgs([]string{"status", "--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "kubectl sockhop status [flags]") {
		t.Errorf("status --help must show the usage line as typed: %q", out.String())
	}
	for _, flag := range []string{"--kubeconfig", "--context", "--namespace", "--pods", "--output"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("status --help lacks %s", flag)
		}
	}
}
