package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	sigsyaml "sigs.k8s.io/yaml"
)

// agentStatus is `sockhop status -o json` of one agent, as far as the
// cluster view reads it (the node CLI's JSON has more).
type agentStatus struct {
	Datapath struct {
		SockopsTag   string   `json:"sockops_tag"`
		MsgTag       string   `json:"sk_msg_tag"`
		ProxyUIDs    []uint32 `json:"proxy_uids"`
		AppReceivers bool     `json:"app_receivers"`
		BacklogLimit int      `json:"backlog_limit"`
	} `json:"datapath"`
	Attachments []struct {
		Cgroup       string    `json:"cgroup"`
		Live         bool      `json:"live"`
		ExcludePorts []uint16  `json:"exclude_ports"`
		PodUID       string    `json:"pod_uid"`
		QOSClass     string    `json:"qos_class"`
		Stats        *podStats `json:"stats"`
		Summary      string    `json:"summary"`
	} `json:"attachments"`
	SocketsInMap int       `json:"sockets_in_sockhash"`
	Maps         []mapFill `json:"maps"`
	Counters     struct {
		PairedSockets      uint64            `json:"paired_sockets"`
		RedirectedMessages uint64            `json:"redirected_messages"`
		RedirectedBytes    uint64            `json:"redirected_bytes"`
		TCPMessages        uint64            `json:"tcp_messages"`
		TCPBytes           uint64            `json:"tcp_bytes"`
		UnsafeReceivers    uint64            `json:"unsafe_receivers"`
		Stranded           uint64            `json:"stranded_receivers"`
		Poisoned           uint64            `json:"poisoned_directions"`
		Passthrough        map[string]uint64 `json:"passthrough"`
		MapErrors          map[string]uint64 `json:"map_errors"`
	} `json:"counters"`
}

// podStats is what happened to an attached pod's connections since its
// attach (the node CLI's "stats" of an attachment).
type podStats struct {
	Connections uint64            `json:"connections"`
	Directions  uint64            `json:"directions"`
	Redirected  uint64            `json:"redirected"`
	OnTCP       map[string]uint64 `json:"on_tcp,omitempty"`
	Poisoned    uint64            `json:"poisoned,omitempty"`
	Retired     uint64            `json:"retired"`
	Unpaired    map[string]uint64 `json:"unpaired,omitempty"`
}

// mapFill is how full one map that bounds acceleration is.
type mapFill struct {
	Name     string `json:"name"`
	Entries  int    `json:"entries"`
	Capacity int    `json:"capacity"`
}

// fullest is the fullest map as "name entries/capacity", "-" without any.
func fullest(maps []mapFill) string {
	best, ratio := -1, -1.0
	for i, m := range maps {
		if m.Capacity > 0 && float64(m.Entries)/float64(m.Capacity) > ratio {
			best, ratio = i, float64(m.Entries)/float64(m.Capacity)
		}
	}
	if best < 0 {
		return "-"
	}
	return fmt.Sprintf("%s %d/%d", maps[best].Name, maps[best].Entries, maps[best].Capacity)
}

// nodeRow is one node of `kubectl sockhop status`.
type nodeRow struct {
	Node  string `json:"node"`
	Agent string `json:"agent,omitempty"` // pod name; "" when the node has none
	Ready bool   `json:"ready"`
	// NotReady says why the agent is not ready (or absent).
	NotReady string `json:"not_ready,omitempty"`
	Restarts int32  `json:"restarts"`
	Image    string `json:"image,omitempty"`
	// Programs are the sockops and sk_msg program tags in use.
	Programs string `json:"programs,omitempty"`
	// Receivers is the receiver policy: "proxies" (sidecar-owned sockets
	// only) or "any".
	Receivers    string `json:"receivers,omitempty"`
	BacklogLimit int    `json:"backlog_limit,omitempty"`
	// PodsAccelerated are attached pods; PodsOptedIn the pods the API says
	// should be (labelled namespace, no opt-out, not hostNetwork).
	PodsAccelerated   int               `json:"pods_accelerated"`
	PodsOptedIn       int               `json:"pods_opted_in"`
	RedirectedBytes   uint64            `json:"redirected_bytes"`
	TCPBytes          uint64            `json:"tcp_bytes"`
	Passthrough       map[string]uint64 `json:"passthrough,omitempty"`
	SocketsInSockhash int               `json:"sockets_in_sockhash"`
	Maps              []mapFill         `json:"maps,omitempty"`
	MapErrors         map[string]uint64 `json:"map_errors,omitempty"`
	// GuardTrips counts directions a hazard guard kept on TCP (passthrough
	// reasons in guardReasons).
	GuardTrips uint64 `json:"guard_trips"`
	// UnsafeReceivers are paired sockets seen splicing or reading with
	// MSG_WAITALL; Stranded those that had redirected bytes unread then.
	UnsafeReceivers uint64 `json:"unsafe_receivers"`
	Stranded        uint64 `json:"stranded_receivers"`
	// StatusError says why the agent's status could not be read.
	StatusError string `json:"status_error,omitempty"`

	status *agentStatus
}

// podRow is one accelerated (or opted-in but not accelerated) pod of
// `kubectl sockhop status --pods`.
type podRow struct {
	Namespace    string   `json:"namespace"`
	Pod          string   `json:"pod"`
	Node         string   `json:"node"`
	Accelerated  bool     `json:"accelerated"`
	QOSClass     string   `json:"qos_class,omitempty"`
	ExcludePorts []uint16 `json:"exclude_ports"`
	// Stats: what the datapath counted for the pod since its attach
	// (connections paired, directions redirected, on TCP for good and
	// sockets not paired by reason), and Summary the same in words.
	Stats   *podStats `json:"stats,omitempty"`
	Summary string    `json:"summary,omitempty"`
	// Event is the agent's latest Event on the pod: what it accelerated, or
	// why it could not.
	EventReason  string `json:"event_reason,omitempty"`
	EventMessage string `json:"event_message,omitempty"`
}

type clusterStatus struct {
	Summary string    `json:"summary"`
	Nodes   []nodeRow `json:"nodes"`
	Pods    []podRow  `json:"pods,omitempty"`
}

func newStatusCommand(c *cluster, out io.Writer) *cobra.Command {
	var (
		output string
		pods   bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "One row per node: agent, datapath, pods accelerated, bytes redirected, what stayed on TCP",
		Long: `Show sockhop on every node: whether the agent is ready (and why not), the
datapath programs in use, the receiver policy, pods accelerated out of those opted
in, bytes redirected and bytes of paired sockets still sent over TCP, connections
and directions left on TCP by reason, sockets in the sockhash, failed map
operations and hazard-guard trips; then a summary line. Counters are totals since
each node's datapath was first loaded.

It reads what the agents know by running 'sockhop status -o json' in each agent pod
(pods/exec), and the API for the pods that should be accelerated.`,
		Example: `  kubectl sockhop status
  kubectl sockhop status -o wide
  kubectl sockhop status --pods
  kubectl sockhop status -o json --context prod`,
		Args: noArgs,
	}
	validate := cliout.OutputFlag(cmd, &output, "table", "wide", "json", "yaml")
	cmd.Flags().BoolVar(&pods, "pods", false, "also list the opted-in pods, each with what the agent reported for it")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := validate(); err != nil {
			return err
		}
		if err := c.connect(); err != nil {
			return err
		}
		st, err := collectClusterStatus(cmd.Context(), c, pods)
		if err != nil {
			return err
		}
		if len(st.Nodes) == 0 || st.Nodes[0].Agent == "" {
			return fmt.Errorf("no sockhop agent pod in namespace %s (selector %s): is sockhop installed there? (-n NAMESPACE)", c.namespace, c.selector)
		}
		return writeStatus(out, st, output, pods)
	}
	return cmd
}

// collectClusterStatus asks every agent for its status and the API for the
// pods opted in on each node.
func collectClusterStatus(ctx context.Context, c *cluster, withPods bool) (*clusterStatus, error) {
	agents, err := c.agents(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]nodeRow, len(agents))
	var wg sync.WaitGroup
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows[i] = agentRow(ctx, c, &agents[i])
		}()
	}
	wg.Wait()
	rows = append(rows, nodesWithoutAgent(ctx, c, agents)...)

	optedIn, err := optedInPods(ctx, c, agents)
	if err != nil {
		return nil, err
	}
	for i := range rows {
		rows[i].PodsOptedIn = len(optedIn[rows[i].Node])
	}
	st := &clusterStatus{Nodes: rows, Summary: summary(rows)}
	if withPods {
		if st.Pods, err = podRows(ctx, c, rows, optedIn); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func agentRow(ctx context.Context, c *cluster, pod *corev1.Pod) nodeRow {
	r := nodeRow{Node: pod.Spec.NodeName, Agent: pod.Name, Restarts: restarts(pod)}
	for _, ctr := range pod.Spec.Containers {
		if ctr.Name == agentContainer {
			r.Image = ctr.Image
		}
	}
	r.Ready, r.NotReady = podReady(pod)
	if !r.Ready && pod.Status.Phase == corev1.PodRunning {
		if why := readyz(ctx, c, pod); why != "" {
			r.NotReady = why
		}
	}
	if pod.Status.Phase != corev1.PodRunning {
		r.StatusError = "agent pod is " + string(pod.Status.Phase)
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, _, err := c.exec(ctx, pod, agentCLI, "status", "-o", "json", "--skip-self-test", "--bpffs-dir", bpffsDir(pod))
	if err != nil {
		r.StatusError = err.Error()
		return r
	}
	var s agentStatus
	if err := json.Unmarshal(out, &s); err != nil {
		r.StatusError = fmt.Sprintf("decode sockhop status of %s: %v", pod.Name, err)
		return r
	}
	r.status = &s
	d := s.Datapath
	r.Programs = "sockops " + d.SockopsTag + ", sk_msg " + d.MsgTag
	r.Receivers = "proxies"
	if d.AppReceivers {
		r.Receivers = "any"
	}
	r.BacklogLimit = d.BacklogLimit
	for _, a := range s.Attachments {
		if a.PodUID != "" {
			r.PodsAccelerated++
		}
	}
	r.RedirectedBytes, r.TCPBytes = s.Counters.RedirectedBytes, s.Counters.TCPBytes
	r.Passthrough, r.MapErrors = nonZero(s.Counters.Passthrough), nonZero(s.Counters.MapErrors)
	r.SocketsInSockhash, r.Maps = s.SocketsInMap, s.Maps
	for _, reason := range guardReasons {
		r.GuardTrips += s.Counters.Passthrough[reason]
	}
	r.UnsafeReceivers, r.Stranded = s.Counters.UnsafeReceivers, s.Counters.Stranded
	return r
}

// guardReasons are the passthrough reasons of the hazard guards: the
// back-pressure bound and the receiver guard (docs/hazards.md).
var guardReasons = []string{"backpressure", "unsafe_receiver", "hazard_learnt", "zerocopy_sender"}

func bpffsDir(pod *corev1.Pod) string {
	if v, ok := agentArg(pod, "bpffs-dir"); ok {
		return v
	}
	return "/sys/fs/bpf/sockhop"
}

// readyz returns the failing checks of a running agent that is not ready,
// from its /readyz through the API server's pod proxy ("" when unavailable).
func readyz(ctx context.Context, c *cluster, pod *corev1.Pod) string {
	port := "9963"
	if v, ok := agentArg(pod, "health-probe-bind-address"); ok {
		port = v[strings.LastIndex(v, ":")+1:]
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, _ := c.cs.CoreV1().Pods(pod.Namespace).ProxyGet("http", pod.Name, port, "readyz", map[string]string{"verbose": "1"}).DoRaw(ctx)
	var failed []string
	for _, line := range strings.Split(string(body), "\n") {
		if s, ok := strings.CutPrefix(line, "[-]"); ok {
			failed = append(failed, strings.TrimSpace(s))
		}
	}
	return strings.Join(failed, "; ")
}

// nodesWithoutAgent are the nodes no agent pod runs on (a nodeSelector, a
// taint, or the DaemonSet not scheduled yet). Without the right to list
// nodes, there are none.
func nodesWithoutAgent(ctx context.Context, c *cluster, agents []corev1.Pod) []nodeRow {
	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	have := map[string]bool{}
	for _, a := range agents {
		have[a.Spec.NodeName] = true
	}
	var rows []nodeRow
	for _, n := range nodes.Items {
		if !have[n.Name] {
			rows = append(rows, nodeRow{Node: n.Name, NotReady: "no agent pod on this node"})
		}
	}
	return rows
}

// The agents' defaults, and what they record and read on pods (package
// controllers; the plugin does not link the agent's code, its tests check
// that these agree with it).
const (
	namespaceLabelKey   = "sockhop.dev/accelerate"
	namespaceLabelValue = "enabled"
	annotationAccel     = "sockhop.dev/accelerate"

	reasonAccelerated         = "Accelerated"
	reasonAccelerationRemoved = "AccelerationRemoved"
	reasonAccelerationFailed  = "AccelerationFailed"
	// The per-pod summaries: what was redirected since the attach.
	reasonAccelerating    = "Accelerating"
	reasonNotAccelerating = "NotAccelerating"
	// The receiver guard's, on the pod of a container it learnt about.
	reasonHazardousReader  = "HazardousReader"
	reasonReceiverStranded = "ReceiverStranded"
)

// wanted is the agents' rule (controllers.Wanted) for a pod of a labelled
// namespace: it should be accelerated on its node.
func wanted(p *corev1.Pod) bool {
	return p.Spec.NodeName != "" && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed &&
		!p.Spec.HostNetwork && p.Annotations[annotationAccel] != "disabled"
}

// optedInPods are the pods the agents should accelerate, by node, decided
// with the agents' rule and their namespace label.
func optedInPods(ctx context.Context, c *cluster, agents []corev1.Pod) (map[string][]*corev1.Pod, error) {
	if len(agents) == 0 {
		return nil, nil
	}
	key, value := namespaceLabelKey, namespaceLabelValue
	if v, ok := agentArg(&agents[0], "namespace-label-key"); ok {
		key = v
	}
	if v, ok := agentArg(&agents[0], "namespace-label-value"); ok {
		value = v
	}
	nss, err := c.cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: key + "=" + value})
	if err != nil {
		return nil, fmt.Errorf("list namespaces labelled %s=%s: %w", key, value, err)
	}
	out := map[string][]*corev1.Pod{}
	for i := range nss.Items {
		ns := &nss.Items[i]
		pods, err := c.cs.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("list pods in %s: %w", ns.Name, err)
		}
		for j := range pods.Items {
			p := &pods.Items[j]
			if wanted(p) {
				out[p.Spec.NodeName] = append(out[p.Spec.NodeName], p)
			}
		}
	}
	return out, nil
}

// podRows lists the opted-in pods and any other pod an agent has attached,
// each with the agent's latest Event on it.
func podRows(ctx context.Context, c *cluster, rows []nodeRow, optedIn map[string][]*corev1.Pod) ([]podRow, error) {
	events, err := sockhopEvents(ctx, c)
	if err != nil {
		return nil, err
	}
	latest := map[types.UID]corev1.Event{}
	for _, e := range events {
		if l, ok := latest[e.InvolvedObject.UID]; !ok || eventTime(e).After(eventTime(l)) {
			latest[e.InvolvedObject.UID] = e
		}
	}
	var out []podRow
	for _, r := range rows {
		attached := map[string]int{}
		if r.status != nil {
			for i, a := range r.status.Attachments {
				if a.PodUID != "" {
					attached[a.PodUID] = i
				}
			}
		}
		for _, p := range optedIn[r.Node] {
			pr := podRow{Namespace: p.Namespace, Pod: p.Name, Node: r.Node, ExcludePorts: []uint16{}}
			if i, ok := attached[string(p.UID)]; ok {
				a := r.status.Attachments[i]
				pr.Accelerated, pr.QOSClass = true, a.QOSClass
				if a.Stats != nil {
					st := *a.Stats
					st.OnTCP, st.Unpaired = nonZero(st.OnTCP), nonZero(st.Unpaired)
					pr.Stats, pr.Summary = &st, a.Summary
				}
				if a.ExcludePorts != nil {
					pr.ExcludePorts = a.ExcludePorts
				}
				delete(attached, string(p.UID))
			}
			if e, ok := latest[p.UID]; ok {
				pr.EventReason, pr.EventMessage = e.Reason, e.Message
			}
			out = append(out, pr)
		}
		// Attached but no longer opted in (being detached, or deleted).
		for uid := range attached {
			out = append(out, podRow{Namespace: "?", Pod: "uid " + uid, Node: r.Node, Accelerated: true,
				ExcludePorts: []uint16{}, EventMessage: "attached, but not an opted-in pod of this node (being detached?)"})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Pod < out[j].Pod
	})
	return out, nil
}

// sockhopReasons are the reasons of the Events the agent records on pods.
var sockhopReasons = map[string]bool{
	reasonAccelerated:         true,
	reasonAccelerationRemoved: true,
	reasonAccelerationFailed:  true,
	reasonAccelerating:        true,
	reasonNotAccelerating:     true,
	reasonHazardousReader:     true,
	reasonReceiverStranded:    true,
}

// sockhopEvents are the agents' Events on pods, in every namespace.
func sockhopEvents(ctx context.Context, c *cluster) ([]corev1.Event, error) {
	list, err := c.cs.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if sockhopReasons[e.Reason] && e.InvolvedObject.Kind == "Pod" {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return eventTime(out[i]).Before(eventTime(out[j])) })
	return out, nil
}

func eventTime(e corev1.Event) time.Time {
	for _, t := range []time.Time{e.EventTime.Time, e.LastTimestamp.Time, e.FirstTimestamp.Time, e.CreationTimestamp.Time} {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func summary(rows []nodeRow) string {
	var ready, accel, opted int
	var redir, tcp, trips uint64
	for _, r := range rows {
		if r.Ready {
			ready++
		}
		accel += r.PodsAccelerated
		opted += r.PodsOptedIn
		redir += r.RedirectedBytes
		tcp += r.TCPBytes
		trips += r.GuardTrips
	}
	return fmt.Sprintf("%d node(s), %d agent(s) ready; %d of %d opted-in pod(s) accelerated; %s redirected, %s of paired sockets over TCP; %d guard trip(s)",
		len(rows), ready, accel, opted, cliout.Bytes(redir), cliout.Bytes(tcp), trips)
}

func writeStatus(w io.Writer, st *clusterStatus, output string, pods bool) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "yaml":
		b, err := sigsyaml.Marshal(st)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	wide := output == "wide"
	tw := cliout.NewTable(w)
	head := "NODE\tAGENT\tRECEIVERS\tPODS\tREDIRECTED\tTCP\tPASSTHROUGH\tMAP FILL\tMAP ERRORS\tGUARD TRIPS\tHAZARDS SEEN"
	if wide {
		head += "\tAGENT POD\tRESTARTS\tPROGRAMS\tBOUND\tIMAGE"
	}
	fmt.Fprintln(tw, head)
	for _, r := range st.Nodes {
		agent := "ready"
		if !r.Ready {
			agent = "not ready: " + cliout.Dash(r.NotReady)
		}
		if r.StatusError != "" && r.Agent != "" {
			agent += " (status: " + r.StatusError + ")"
		}
		hazards := cliout.Counts(map[string]uint64{"unsafe": r.UnsafeReceivers, "stranded": r.Stranded}, "-")
		line := fmt.Sprintf("%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s", r.Node, agent, cliout.Dash(r.Receivers),
			r.PodsAccelerated, r.PodsOptedIn, cliout.Bytes(r.RedirectedBytes), cliout.Bytes(r.TCPBytes),
			cliout.Counts(r.Passthrough, "-"), fullest(r.Maps), cliout.Counts(r.MapErrors, "-"), r.GuardTrips, hazards)
		if wide {
			bound := "none"
			if r.BacklogLimit > 0 {
				bound = cliout.Bytes(uint64(r.BacklogLimit))
			}
			line += fmt.Sprintf("\t%s\t%d\t%s\t%s\t%s", cliout.Dash(r.Agent), r.Restarts, cliout.Dash(r.Programs), bound, cliout.Dash(r.Image))
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, st.Summary)
	if !pods {
		return nil
	}
	fmt.Fprintln(w)
	tw = cliout.NewTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tNODE\tACCELERATED\tCONNECTIONS\tDIRECTIONS REDIRECTED\tON TCP FOR GOOD\tNOT PAIRED\tEXCLUDED PORTS\tLAST EVENT")
	for _, p := range st.Pods {
		conns, redirected, onTCP, unpaired := "-", "-", "-", "-"
		if s := p.Stats; s != nil {
			conns, redirected = fmt.Sprint(s.Connections), fmt.Sprintf("%d of %d", s.Redirected, s.Directions)
			onTCP, unpaired = cliout.Counts(s.OnTCP, "-"), cliout.Counts(s.Unpaired, "-")
		}
		ev := "-"
		if p.EventReason != "" || p.EventMessage != "" {
			ev = strings.TrimSpace(p.EventReason + ": " + p.EventMessage)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Pod, p.Node, cliout.YesNo(p.Accelerated),
			conns, redirected, onTCP, unpaired, cliout.Ports(p.ExcludePorts), ev)
	}
	return tw.Flush()
}
