// Template tests of the sockhop chart: render it with Helm's own engine, with the
// default values and with changed ones, decode the manifests into Kubernetes API
// types and check what a cluster would get. No cluster and no root needed.
package chart_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

const (
	chartDir    = "."
	releaseName = "sockhop"
	namespace   = "sockhop-system"
	fullname    = "sockhop" // the release name contains the chart name
)

// objects are the rendered manifests, decoded.
type objects struct {
	kinds          []string // "Kind/name" of every object, sorted
	daemonSet      *appsv1.DaemonSet
	serviceAccount *corev1.ServiceAccount
	clusterRole    *rbacv1.ClusterRole
	clusterBinding *rbacv1.ClusterRoleBinding
	role           *rbacv1.Role
	roleBinding    *rbacv1.RoleBinding
	service        *corev1.Service
	podMonitor     map[string]any
	serviceMonitor map[string]any
	prometheusRule map[string]any
	configMaps     []*corev1.ConfigMap
	metas          []metav1.ObjectMeta // of every object
	notes          string
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

// render renders the chart as `helm install sockhop -n sockhop-system` would
// into a Kubernetes 1.37 cluster, with vals over the chart's values, schema
// validation included.
func render(t *testing.T, vals map[string]any) (map[string]string, *chart.Chart, error) {
	t.Helper()
	return renderWith(t, releaseName, "v1.37.2", vals)
}

func renderWith(t *testing.T, release, kubeVersion string, vals map[string]any) (map[string]string, *chart.Chart, error) {
	t.Helper()
	ch := loadChart(t)
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true, Revision: 1}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, caps)
	if err != nil {
		return nil, ch, err
	}
	// Strict: a template that reads a value missing from values.yaml fails.
	out, err := engine.Engine{Strict: true}.Render(ch, rv)
	return out, ch, err
}

// mustRender renders and decodes, failing the test on any error.
func mustRender(t *testing.T, vals map[string]any) *objects {
	t.Helper()
	out, ch, err := render(t, vals)
	if err != nil {
		t.Fatalf("render with %v: %v", vals, err)
	}
	objs, err := decode(out, ch.Name())
	if err != nil {
		t.Fatalf("decode manifests rendered with %v: %v", vals, err)
	}
	return objs
}

// decode parses every rendered manifest strictly (an unknown field is an error)
// into its API type.
func decode(files map[string]string, chartName string) (*objects, error) {
	objs := &objects{notes: files[chartName+"/templates/NOTES.txt"]}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(files[name])))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 || isOnlyComments(doc) {
				continue
			}
			if err := objs.add(doc); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	sort.Strings(objs.kinds)
	return objs, nil
}

func (o *objects) add(doc []byte) error {
	var head struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
	}
	if err := sigsyaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	o.kinds = append(o.kinds, head.Kind+"/"+head.Metadata.Name)
	o.metas = append(o.metas, head.Metadata)
	var into any
	switch head.APIVersion + " " + head.Kind {
	case "apps/v1 DaemonSet":
		o.daemonSet = &appsv1.DaemonSet{}
		into = o.daemonSet
	case "v1 ServiceAccount":
		o.serviceAccount = &corev1.ServiceAccount{}
		into = o.serviceAccount
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		o.clusterRole = &rbacv1.ClusterRole{}
		into = o.clusterRole
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		o.clusterBinding = &rbacv1.ClusterRoleBinding{}
		into = o.clusterBinding
	case "rbac.authorization.k8s.io/v1 Role":
		o.role = &rbacv1.Role{}
		into = o.role
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		o.roleBinding = &rbacv1.RoleBinding{}
		into = o.roleBinding
	case "v1 Service":
		o.service = &corev1.Service{}
		into = o.service
	case "monitoring.coreos.com/v1 PodMonitor":
		into = &o.podMonitor
	case "monitoring.coreos.com/v1 ServiceMonitor":
		into = &o.serviceMonitor
	case "monitoring.coreos.com/v1 PrometheusRule":
		into = &o.prometheusRule
	case "v1 ConfigMap":
		cm := &corev1.ConfigMap{}
		o.configMaps = append(o.configMaps, cm)
		into = cm
	default:
		return fmt.Errorf("unexpected object %s %s", head.APIVersion, head.Kind)
	}
	if err := sigsyaml.UnmarshalStrict(doc, into); err != nil {
		return fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, err)
	}
	return nil
}

func isOnlyComments(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func agentContainer(t *testing.T, objs *objects) corev1.Container {
	t.Helper()
	if objs.daemonSet == nil {
		t.Fatal("no DaemonSet rendered")
	}
	cs := objs.daemonSet.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "sockhop-agent" {
		t.Fatalf("containers = %v, want one named sockhop-agent", cs)
	}
	return cs[0]
}

func TestDefaultObjects(t *testing.T) {
	objs := mustRender(t, nil)
	want := []string{
		"ClusterRole/" + fullname,
		"ClusterRoleBinding/" + fullname,
		"DaemonSet/" + fullname,
		"Role/" + fullname,
		"RoleBinding/" + fullname,
		"ServiceAccount/" + fullname,
	}
	if !slices.Equal(objs.kinds, want) {
		t.Fatalf("objects = %v, want %v", objs.kinds, want)
	}
	for _, m := range objs.metas {
		clusterScoped := strings.HasPrefix(m.Name, fullname) && m.Namespace == "" &&
			(slices.Contains(objs.kinds, "ClusterRole/"+m.Name) || slices.Contains(objs.kinds, "ClusterRoleBinding/"+m.Name))
		if m.Namespace != namespace && !clusterScoped {
			t.Errorf("%s: namespace %q, want %q", m.Name, m.Namespace, namespace)
		}
	}
	if objs.clusterRole.Namespace != "" || objs.clusterBinding.Namespace != "" {
		t.Errorf("cluster-scoped objects carry a namespace: %q %q", objs.clusterRole.Namespace, objs.clusterBinding.Namespace)
	}
}

func TestLabels(t *testing.T) {
	ch := loadChart(t)
	objs := mustRender(t, map[string]any{"podLabels": map[string]any{"team": "net"}})
	wantCommon := map[string]string{
		"app.kubernetes.io/name":       "sockhop",
		"app.kubernetes.io/instance":   releaseName,
		"app.kubernetes.io/component":  "agent",
		"app.kubernetes.io/part-of":    "sockhop",
		"app.kubernetes.io/managed-by": "Helm",
	}
	for _, m := range objs.metas {
		for k, v := range wantCommon {
			if m.Labels[k] != v {
				t.Errorf("%s: label %s = %q, want %q", m.Name, k, m.Labels[k], v)
			}
		}
		if got, want := m.Labels["helm.sh/chart"], "sockhop-"+ch.Metadata.Version; got != want {
			t.Errorf("%s: label helm.sh/chart = %q, want %q", m.Name, got, want)
		}
		if got := m.Labels["app.kubernetes.io/version"]; got != ch.Metadata.AppVersion {
			t.Errorf("%s: label app.kubernetes.io/version = %q, want %q", m.Name, got, ch.Metadata.AppVersion)
		}
	}

	ds := objs.daemonSet
	podLabels := ds.Spec.Template.Labels
	for _, k := range []string{"helm.sh/chart", "app.kubernetes.io/version"} {
		if _, ok := podLabels[k]; ok {
			t.Errorf("pod template has label %s (a chart bump alone would roll every agent)", k)
		}
		if _, ok := ds.Spec.Selector.MatchLabels[k]; ok {
			t.Errorf("selector has label %s (selectors are immutable)", k)
		}
	}
	if podLabels["team"] != "net" {
		t.Errorf("pod label team = %q, want net (podLabels)", podLabels["team"])
	}
	wantSelector := map[string]string{
		"app.kubernetes.io/name":      "sockhop",
		"app.kubernetes.io/instance":  releaseName,
		"app.kubernetes.io/component": "agent",
	}
	if !reflect.DeepEqual(ds.Spec.Selector.MatchLabels, wantSelector) || len(ds.Spec.Selector.MatchExpressions) != 0 {
		t.Errorf("selector = %v, want %v", ds.Spec.Selector, wantSelector)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(podLabels)) {
		t.Errorf("selector %v does not select the pod template labels %v", sel, podLabels)
	}
}

func TestSecurityContext(t *testing.T) {
	objs := mustRender(t, nil)
	spec := objs.daemonSet.Spec.Template.Spec
	c := agentContainer(t, objs)
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("privileged = %s, want explicit false", js(sc.Privileged))
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation = %s, want false", js(sc.AllowPrivilegeEscalation))
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem = %s, want true", js(sc.ReadOnlyRootFilesystem))
	}
	if sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	if got := sc.Capabilities.Drop; !slices.Equal(got, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop = %v, want [ALL]", got)
	}
	// SYS_ADMIN for abortStranded (setns into pods' network namespaces).
	if got, want := sc.Capabilities.Add, []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"}; !slices.Equal(got, want) {
		t.Errorf("capabilities.add = %v, want %v", got, want)
	}
	noAbort := agentContainer(t, mustRender(t, map[string]any{"abortStranded": false})).SecurityContext
	if got, want := noAbort.Capabilities.Add, []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON"}; !slices.Equal(got, want) {
		t.Errorf("abortStranded=false: capabilities.add = %v, want %v", got, want)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile = %v, want RuntimeDefault", sc.SeccompProfile)
	}
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Errorf("appArmorProfile = %v, want Unconfined", sc.AppArmorProfile)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("hostNetwork/hostPID/hostIPC = %v/%v/%v, want all false", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	if len(spec.InitContainers) != 0 {
		t.Errorf("init containers %v: none expected", spec.InitContainers)
	}

	// The capability list is a value.
	objs = mustRender(t, map[string]any{
		"capabilities":    []any{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"},
		"seccompProfile":  map[string]any{"type": "Localhost", "localhostProfile": "profiles/sockhop.json"},
		"appArmorProfile": map[string]any{"type": "Localhost", "localhostProfile": "sockhop"},
	})
	sc = agentContainer(t, objs).SecurityContext
	if got, want := sc.Capabilities.Add, []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"}; !slices.Equal(got, want) {
		t.Errorf("capabilities.add = %v, want %v", got, want)
	}
	if p := sc.SeccompProfile; p.Type != corev1.SeccompProfileTypeLocalhost || p.LocalhostProfile == nil || *p.LocalhostProfile != "profiles/sockhop.json" {
		t.Errorf("seccompProfile = %+v", p)
	}
	if p := sc.AppArmorProfile; p.Type != corev1.AppArmorProfileTypeLocalhost || p.LocalhostProfile == nil || *p.LocalhostProfile != "sockhop" {
		t.Errorf("appArmorProfile = %+v", p)
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("privileged = %s with extra capabilities, want false", js(sc.Privileged))
	}
}

// TestAppArmorBefore130 checks that clusters without the appArmorProfile field
// (before Kubernetes 1.30) get the same profile through the annotation.
func TestAppArmorBefore130(t *testing.T) {
	for _, tc := range []struct {
		profile map[string]any
		want    string
	}{
		{nil, "unconfined"},
		{map[string]any{"type": "RuntimeDefault"}, "runtime/default"},
		{map[string]any{"type": "Localhost", "localhostProfile": "sockhop"}, "localhost/sockhop"},
	} {
		vals := map[string]any{"podAnnotations": map[string]any{"example.com/a": "b"}}
		if tc.profile != nil {
			vals["appArmorProfile"] = tc.profile
		}
		out, ch, err := renderWith(t, releaseName, "v1.29.4", vals)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decode(out, ch.Name())
		if err != nil {
			t.Fatal(err)
		}
		ann := objs.daemonSet.Spec.Template.Annotations
		if got := ann["container.apparmor.security.beta.kubernetes.io/sockhop-agent"]; got != tc.want {
			t.Errorf("AppArmor annotation = %q, want %q", got, tc.want)
		}
		if ann["example.com/a"] != "b" {
			t.Errorf("podAnnotations lost: %v", ann)
		}
		c := agentContainer(t, objs)
		if p := c.SecurityContext.AppArmorProfile; p != nil {
			t.Errorf("appArmorProfile field %+v set for Kubernetes 1.29", p)
		}
		// recursiveReadOnly is GA in 1.33 only: plain readOnly before.
		if m := c.VolumeMounts[1]; m.Name != "cgroup" || !m.ReadOnly || m.RecursiveReadOnly != nil {
			t.Errorf("cgroup mount for Kubernetes 1.29 = %s, want readOnly without recursiveReadOnly", js(m))
		}
	}
	objs := mustRender(t, nil)
	if _, ok := objs.daemonSet.Spec.Template.Annotations["container.apparmor.security.beta.kubernetes.io/sockhop-agent"]; ok {
		t.Error("AppArmor annotation set for Kubernetes 1.37, want the field only")
	}
}

// TestCapabilitiesDocumented checks that values.yaml says why each default
// capability is added.
func TestCapabilitiesDocumented(t *testing.T) {
	raw, err := os.ReadFile("values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	root := doc.Content[0]
	for i := 0; i < len(root.Content); i += 2 {
		if root.Content[i].Value != "capabilities" {
			continue
		}
		comment := root.Content[i].HeadComment
		for _, c := range root.Content[i+1].Content {
			if !strings.Contains(comment, "#   "+c.Value+" ") {
				t.Errorf("values.yaml: capability %s has no line '#   %s - why' above capabilities", c.Value, c.Value)
			}
		}
		return
	}
	t.Fatal("values.yaml has no capabilities")
}

func TestHostPathMounts(t *testing.T) {
	for _, hostRoot := range []string{"/sys/fs/cgroup", "/run/cgroup2"} {
		objs := mustRender(t, map[string]any{"cgroup": map[string]any{"hostRoot": hostRoot}})
		spec := objs.daemonSet.Spec.Template.Spec
		dir, orCreate := corev1.HostPathDirectory, corev1.HostPathDirectoryOrCreate
		wantVolumes := []corev1.Volume{
			{Name: "bpffs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/sys/fs/bpf", Type: &dir}}},
			{Name: "cgroup", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostRoot, Type: &dir}}},
			{Name: "netns", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/netns", Type: &orCreate}}},
		}
		if !reflect.DeepEqual(spec.Volumes, wantVolumes) {
			t.Errorf("volumes = %s, want %s", js(spec.Volumes), js(wantVolumes))
		}
		h2c := corev1.MountPropagationHostToContainer
		ifPossible := corev1.RecursiveReadOnlyIfPossible
		wantMounts := []corev1.VolumeMount{
			{Name: "bpffs", MountPath: "/sys/fs/bpf", MountPropagation: &h2c},
			{Name: "cgroup", MountPath: hostRoot, ReadOnly: true, RecursiveReadOnly: &ifPossible},
			{Name: "netns", MountPath: "/var/run/netns", ReadOnly: true, MountPropagation: &h2c},
		}
		if got := agentContainer(t, objs).VolumeMounts; !reflect.DeepEqual(got, wantMounts) {
			t.Errorf("volumeMounts = %s, want %s", js(got), js(wantMounts))
		}
	}
}

func TestEnv(t *testing.T) {
	extra := map[string]any{"name": "GOMAXPROCS", "value": "2"}
	objs := mustRender(t, map[string]any{"extraEnv": []any{extra}})
	env := agentContainer(t, objs).Env
	want := []corev1.EnvVar{
		{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "DAEMONSET_NAME", Value: objs.daemonSet.Name},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "GOMAXPROCS", Value: "2"},
	}
	if !reflect.DeepEqual(env, want) {
		t.Errorf("env = %s, want %s", js(env), js(want))
	}
	if objs.daemonSet.Name != fullname {
		t.Errorf("DaemonSet name = %q, want %q", objs.daemonSet.Name, fullname)
	}

	// The DaemonSet name the agent checks follows the release name.
	out, ch, err := renderWith(t, "edge", "v1.37.2", map[string]any{"fullnameOverride": "hop"})
	if err != nil {
		t.Fatal(err)
	}
	objs, err = decode(out, ch.Name())
	if err != nil {
		t.Fatal(err)
	}
	if objs.daemonSet.Name != "hop" {
		t.Fatalf("DaemonSet name = %q, want hop", objs.daemonSet.Name)
	}
	if got := agentContainer(t, objs).Env[2]; got.Name != "DAEMONSET_NAME" || got.Value != "hop" {
		t.Errorf("env[2] = %+v, want DAEMONSET_NAME=hop", got)
	}
}

func TestArgs(t *testing.T) {
	objs := mustRender(t, nil)
	c := agentContainer(t, objs)
	if !slices.Equal(c.Command, []string{"/usr/local/bin/sockhop-agent"}) {
		t.Errorf("command = %v", c.Command)
	}
	want := []string{
		"--node-name=$(NODE_NAME)",
		"--namespace-label-key=sockhop.dev/accelerate",
		"--namespace-label-value=enabled",
		"--bpffs-dir=/sys/fs/bpf/sockhop",
		"--proxy-uids=1337,2102,5678",
		"--app-receivers=auto",
		"--max-connections=131072",
		"--syscall-guard=true",
		"--abort-stranded=true",
		"--netns-dirs=/var/run/netns",
		"--metrics-bind-address=:9962",
		"--health-probe-bind-address=:9963",
		"--uninstall-on-delete=true",
		"--zap-log-level=info",
	}
	if !slices.Equal(c.Args, want) {
		t.Errorf("default args:\n got %q\nwant %q", c.Args, want)
	}

	objs = mustRender(t, map[string]any{
		"accelerate":        map[string]any{"namespaceLabel": map[string]any{"key": "example.com/fast-path", "value": "on"}},
		"bpffsDir":          "/sys/fs/bpf/hop",
		"cgroup":            map[string]any{"mount": "/sys/fs/cgroup/unified", "driver": "systemd", "root": "/sockhop-e2e"},
		"proxyUIDs":         []any{101, 1337},
		"appReceivers":      "false",
		"maxConnections":    200000,
		"syscallGuard":      false,
		"metrics":           map[string]any{"port": 19962},
		"health":            map[string]any{"port": 19963},
		"uninstallOnDelete": false,
		"logLevel":          3,
		"extraArgs":         []any{"--zap-devel", "--zap-encoder=json"},
	})
	c = agentContainer(t, objs)
	want = []string{
		"--node-name=$(NODE_NAME)",
		"--namespace-label-key=example.com/fast-path",
		"--namespace-label-value=on",
		"--bpffs-dir=/sys/fs/bpf/hop",
		"--cgroup-mount=/sys/fs/cgroup/unified",
		"--cgroup-driver=systemd",
		"--cgroup-root=/sockhop-e2e",
		"--proxy-uids=101,1337",
		"--app-receivers=false",
		"--max-connections=200000",
		"--syscall-guard=false",
		"--abort-stranded=true",
		"--netns-dirs=/var/run/netns",
		"--metrics-bind-address=:19962",
		"--health-probe-bind-address=:19963",
		"--uninstall-on-delete=false",
		"--zap-log-level=3",
		"--zap-devel",
		"--zap-encoder=json",
	}
	if !slices.Equal(c.Args, want) {
		t.Errorf("args:\n got %q\nwant %q", c.Args, want)
	}
	wantPorts := []corev1.ContainerPort{
		{Name: "metrics", ContainerPort: 19962, Protocol: corev1.ProtocolTCP},
		{Name: "health", ContainerPort: 19963, Protocol: corev1.ProtocolTCP},
	}
	if !reflect.DeepEqual(c.Ports, wantPorts) {
		t.Errorf("ports = %s, want %s", js(c.Ports), js(wantPorts))
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			t.Errorf("port %s has hostPort %d", p.Name, p.HostPort)
		}
	}
}

func TestProbes(t *testing.T) {
	objs := mustRender(t, map[string]any{"health": map[string]any{"port": 8081}})
	c := agentContainer(t, objs)
	check := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("%s probe: %v, want an HTTP GET", name, p)
		}
		if p.HTTPGet.Path != path || p.HTTPGet.Port != intstr.FromString("health") {
			t.Errorf("%s probe GET %s on %v, want %s on the health port", name, p.HTTPGet.Path, p.HTTPGet.Port, path)
		}
		if p.PeriodSeconds == 0 || p.FailureThreshold == 0 || p.TimeoutSeconds == 0 {
			t.Errorf("%s probe timings missing: %+v", name, p)
		}
	}
	check("liveness", c.LivenessProbe, "/healthz")
	check("readiness", c.ReadinessProbe, "/readyz")
	var healthPort int32
	for _, p := range c.Ports {
		if p.Name == "health" {
			healthPort = p.ContainerPort
		}
	}
	if healthPort != 8081 || !slices.Contains(c.Args, "--health-probe-bind-address=:8081") {
		t.Errorf("health port %d, args %q: want 8081 in both", healthPort, c.Args)
	}
}

func TestPodSpecValues(t *testing.T) {
	ch := loadChart(t)
	objs := mustRender(t, nil)
	ds := objs.daemonSet
	c := agentContainer(t, objs)
	if want := "sockhop/sockhop-agent:" + ch.Metadata.AppVersion; c.Image != want {
		t.Errorf("image = %q, want %q", c.Image, want)
	}
	if c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("imagePullPolicy = %q", c.ImagePullPolicy)
	}
	wantRes := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
	}
	if !equalResources(c.Resources, wantRes) {
		t.Errorf("resources = %s, want %s", js(c.Resources), js(wantRes))
	}
	spec := ds.Spec.Template.Spec
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !reflect.DeepEqual(spec.Tolerations, want) {
		t.Errorf("tolerations = %s, want %s", js(spec.Tolerations), js(want))
	}
	if spec.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector = %v", spec.NodeSelector)
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds != 30 {
		t.Errorf("terminationGracePeriodSeconds = %v, want 30", spec.TerminationGracePeriodSeconds)
	}
	if spec.ServiceAccountName != objs.serviceAccount.Name {
		t.Errorf("serviceAccountName = %q, want %q", spec.ServiceAccountName, objs.serviceAccount.Name)
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		*us.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) || *us.RollingUpdate.MaxSurge != intstr.FromInt32(0) {
		t.Errorf("updateStrategy = %s, want RollingUpdate maxUnavailable 1 maxSurge 0", js(us))
	}

	affinity := map[string]any{"nodeAffinity": map[string]any{"requiredDuringSchedulingIgnoredDuringExecution": map[string]any{
		"nodeSelectorTerms": []any{map[string]any{"matchExpressions": []any{map[string]any{
			"key": "sockhop.dev/skip", "operator": "DoesNotExist"}}}}}}}
	objs = mustRender(t, map[string]any{
		"image":                         map[string]any{"repository": "registry.local:5000/sockhop", "tag": "dev-1", "pullPolicy": "Never"},
		"imagePullSecrets":              []any{map[string]any{"name": "regcred"}},
		"resources":                     map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "96Mi"}, "limits": map[string]any{"cpu": 1, "memory": "256Mi"}},
		"tolerations":                   []any{map[string]any{"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"}},
		"nodeSelector":                  map[string]any{"sockhop.dev/node": "yes"},
		"affinity":                      affinity,
		"podAnnotations":                map[string]any{"example.com/owner": "netops"},
		"priorityClassName":             "",
		"terminationGracePeriodSeconds": 90,
		"updateStrategy":                map[string]any{"maxUnavailable": "10%"},
	})
	ds = objs.daemonSet
	spec = ds.Spec.Template.Spec
	c = agentContainer(t, objs)
	if c.Image != "registry.local:5000/sockhop:dev-1" || c.ImagePullPolicy != corev1.PullNever {
		t.Errorf("image %q policy %q", c.Image, c.ImagePullPolicy)
	}
	if !reflect.DeepEqual(spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}) {
		t.Errorf("imagePullSecrets = %v", spec.ImagePullSecrets)
	}
	wantRes = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("96Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	if !equalResources(c.Resources, wantRes) {
		t.Errorf("resources = %s, want %s", js(c.Resources), js(wantRes))
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" || spec.Tolerations[0].Effect != corev1.TaintEffectNoSchedule {
		t.Errorf("tolerations = %s", js(spec.Tolerations))
	}
	// Helm merges maps with the defaults: kubernetes.io/os stays unless set to null.
	if !reflect.DeepEqual(spec.NodeSelector, map[string]string{"kubernetes.io/os": "linux", "sockhop.dev/node": "yes"}) {
		t.Errorf("nodeSelector = %v", spec.NodeSelector)
	}
	if a := spec.Affinity; a == nil || a.NodeAffinity == nil ||
		a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Key != "sockhop.dev/skip" {
		t.Errorf("affinity = %s", js(spec.Affinity))
	}
	if ds.Spec.Template.Annotations["example.com/owner"] != "netops" {
		t.Errorf("pod annotations = %v", ds.Spec.Template.Annotations)
	}
	if spec.PriorityClassName != "" {
		t.Errorf("priorityClassName = %q, want empty", spec.PriorityClassName)
	}
	if *spec.TerminationGracePeriodSeconds != 90 {
		t.Errorf("terminationGracePeriodSeconds = %d, want 90", *spec.TerminationGracePeriodSeconds)
	}
	if got := *ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable; got != intstr.FromString("10%") {
		t.Errorf("maxUnavailable = %v, want 10%%", got)
	}

	objs = mustRender(t, map[string]any{"image": map[string]any{"tag": "ignored",
		"digest": "sha256:" + strings.Repeat("ab", 32)}})
	if got, want := agentContainer(t, objs).Image, "sockhop/sockhop-agent@sha256:"+strings.Repeat("ab", 32); got != want {
		t.Errorf("image with digest = %q, want %q", got, want)
	}
}

func equalResources(a, b corev1.ResourceRequirements) bool {
	eq := func(x, y corev1.ResourceList) bool {
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || v.Cmp(w) != 0 {
				return false
			}
		}
		return true
	}
	return eq(a.Requests, b.Requests) && eq(a.Limits, b.Limits)
}

func TestRBAC(t *testing.T) {
	objs := mustRender(t, nil)
	wantCluster := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	if !reflect.DeepEqual(objs.clusterRole.Rules, wantCluster) {
		t.Errorf("ClusterRole rules = %s, want %s", js(objs.clusterRole.Rules), js(wantCluster))
	}
	if objs.clusterRole.AggregationRule != nil {
		t.Errorf("ClusterRole aggregates: %v", objs.clusterRole.AggregationRule)
	}
	wantRole := []rbacv1.PolicyRule{{
		APIGroups:     []string{"apps"},
		Resources:     []string{"daemonsets"},
		ResourceNames: []string{objs.daemonSet.Name},
		Verbs:         []string{"get", "list", "watch"},
	}}
	if !reflect.DeepEqual(objs.role.Rules, wantRole) {
		t.Errorf("Role rules = %s, want %s", js(objs.role.Rules), js(wantRole))
	}
	if objs.role.Namespace != namespace || objs.roleBinding.Namespace != namespace {
		t.Errorf("Role/RoleBinding in %q/%q, want %q", objs.role.Namespace, objs.roleBinding.Namespace, namespace)
	}
	sa := rbacv1.Subject{Kind: "ServiceAccount", Name: objs.serviceAccount.Name, Namespace: namespace}
	if b := objs.clusterBinding; !reflect.DeepEqual(b.Subjects, []rbacv1.Subject{sa}) ||
		b.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: objs.clusterRole.Name}) {
		t.Errorf("ClusterRoleBinding = %s", js(b))
	}
	if b := objs.roleBinding; !reflect.DeepEqual(b.Subjects, []rbacv1.Subject{sa}) ||
		b.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: objs.role.Name}) {
		t.Errorf("RoleBinding = %s", js(b))
	}

	// No RBAC, an existing ServiceAccount.
	objs = mustRender(t, map[string]any{"rbac": map[string]any{"create": false},
		"serviceAccount": map[string]any{"create": false, "name": "byo"}})
	if want := []string{"DaemonSet/" + fullname}; !slices.Equal(objs.kinds, want) {
		t.Errorf("objects = %v, want %v", objs.kinds, want)
	}
	if got := objs.daemonSet.Spec.Template.Spec.ServiceAccountName; got != "byo" {
		t.Errorf("serviceAccountName = %q, want byo", got)
	}
	if _, _, err := render(t, map[string]any{"serviceAccount": map[string]any{"create": false}}); err == nil ||
		!strings.Contains(err.Error(), "serviceAccount.name") {
		t.Errorf("serviceAccount.create=false without a name: err = %v, want one naming serviceAccount.name", err)
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vals  map[string]any
		field string // must appear in the error
	}{
		{"unknown top-level key", map[string]any{"acceleration": true}, "acceleration"},
		{"unknown nested key", map[string]any{"metrics": map[string]any{"prot": 1}}, "prot"},
		{"label key with a space", map[string]any{"accelerate": map[string]any{"namespaceLabel": map[string]any{"key": "sockhop accelerate"}}}, "/accelerate/namespaceLabel/key"},
		{"label key with two slashes", map[string]any{"accelerate": map[string]any{"namespaceLabel": map[string]any{"key": "a/b/c"}}}, "/accelerate/namespaceLabel/key"},
		{"label value with a slash", map[string]any{"accelerate": map[string]any{"namespaceLabel": map[string]any{"value": "on/off"}}}, "/accelerate/namespaceLabel/value"},
		{"empty label value", map[string]any{"accelerate": map[string]any{"namespaceLabel": map[string]any{"value": ""}}}, "/accelerate/namespaceLabel/value"},
		{"long label value", map[string]any{"accelerate": map[string]any{"namespaceLabel": map[string]any{"value": strings.Repeat("a", 64)}}}, "/accelerate/namespaceLabel/value"},
		{"metrics port 0", map[string]any{"metrics": map[string]any{"port": 0}}, "/metrics/port"},
		{"metrics port as string", map[string]any{"metrics": map[string]any{"port": "9962"}}, "/metrics/port"},
		{"health port too high", map[string]any{"health": map[string]any{"port": 70000}}, "/health/port"},
		{"proxy uid too high", map[string]any{"proxyUIDs": []any{1337, 65536}}, "/proxyUIDs/1"},
		{"app receivers not a mode", map[string]any{"appReceivers": "yes"}, "/appReceivers"},
		{"max connections zero", map[string]any{"maxConnections": 0}, "/maxConnections"},
		{"syscall guard not a bool", map[string]any{"syscallGuard": "yes"}, "/syscallGuard"},
		{"max connections not a number", map[string]any{"maxConnections": "many"}, "/maxConnections"},
		{"proxy uid negative", map[string]any{"proxyUIDs": []any{-1}}, "/proxyUIDs/0"},
		{"proxy uid as string", map[string]any{"proxyUIDs": []any{"1337"}}, "/proxyUIDs/0"},
		{"proxy uid fraction", map[string]any{"proxyUIDs": []any{1337.5}}, "/proxyUIDs/0"},
		{"no proxy uids", map[string]any{"proxyUIDs": []any{}}, "/proxyUIDs"},
		{"proxyUIDs not a list", map[string]any{"proxyUIDs": "1337,2102"}, "/proxyUIDs"},
		{"unknown capability", map[string]any{"capabilities": []any{"BPF", "SYS_BOOT"}}, "/capabilities/1"},
		{"capability with CAP_ prefix", map[string]any{"capabilities": []any{"CAP_BPF"}}, "/capabilities/0"},
		{"SYS_RESOURCE", map[string]any{"capabilities": []any{"BPF", "SYS_RESOURCE"}}, "/capabilities/1"},
		{"bpffsDir outside bpffs", map[string]any{"bpffsDir": "/var/run/sockhop"}, "/bpffsDir"},
		{"bpffsDir is the bpffs root", map[string]any{"bpffsDir": "/sys/fs/bpf"}, "/bpffsDir"},
		{"cgroup driver unknown", map[string]any{"cgroup": map[string]any{"driver": "docker"}}, "/cgroup/driver"},
		{"cgroup mount relative", map[string]any{"cgroup": map[string]any{"mount": "sys/fs/cgroup"}}, "/cgroup/mount"},
		{"uninstallOnDelete as string", map[string]any{"uninstallOnDelete": "yes"}, "/uninstallOnDelete"},
		{"log level unknown", map[string]any{"logLevel": "verbose"}, "/logLevel"},
		{"log level 0", map[string]any{"logLevel": 0}, "/logLevel"},
		{"pull policy unknown", map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, "/image/pullPolicy"},
		{"image digest malformed", map[string]any{"image": map[string]any{"digest": "sha256:xyz"}}, "/image/digest"},
		{"maxUnavailable 0", map[string]any{"updateStrategy": map[string]any{"maxUnavailable": 0}}, "/updateStrategy/maxUnavailable"},
		{"maxUnavailable 0%", map[string]any{"updateStrategy": map[string]any{"maxUnavailable": "0%"}}, "/updateStrategy/maxUnavailable"},
		{"grace period negative", map[string]any{"terminationGracePeriodSeconds": -1}, "/terminationGracePeriodSeconds"},
		{"cpu request malformed", map[string]any{"resources": map[string]any{"requests": map[string]any{"cpu": "lots"}}}, "/resources/requests/cpu"},
		{"podMonitor.enabled as string", map[string]any{"podMonitor": map[string]any{"enabled": "true"}}, "/podMonitor/enabled"},
		{"scrape interval malformed", map[string]any{"serviceMonitor": map[string]any{"interval": "30 seconds"}}, "/serviceMonitor/interval"},
		{"pod label overrides selector", map[string]any{"podLabels": map[string]any{"app.kubernetes.io/name": "x"}}, "/podLabels"},
		{"seccomp Localhost without profile", map[string]any{"seccompProfile": map[string]any{"type": "Localhost"}}, "/seccompProfile"},
		{"apparmor type unknown", map[string]any{"appArmorProfile": map[string]any{"type": "Complain"}}, "/appArmorProfile/type"},
		{"extraEnv with value and valueFrom", map[string]any{"extraEnv": []any{map[string]any{"name": "A", "value": "1", "valueFrom": map[string]any{}}}}, "/extraEnv/0"},
		{"extraArgs not a flag", map[string]any{"extraArgs": []any{"zap-devel"}}, "/extraArgs/0"},
		{"bad nodeSelector key", map[string]any{"nodeSelector": map[string]any{"a b": "x"}}, "/nodeSelector"},
		{"bad podMonitor label value", map[string]any{"podMonitor": map[string]any{"labels": map[string]any{"release": "a b"}}}, "/podMonitor/labels/release"},
		{"dashboards.enabled as string", map[string]any{"dashboards": map[string]any{"enabled": "yes"}}, "/dashboards/enabled"},
		{"dashboard label key with a space", map[string]any{"dashboards": map[string]any{"label": "grafana dashboard"}}, "/dashboards/label"},
		{"dashboard namespace not a name", map[string]any{"dashboards": map[string]any{"namespace": "Monitoring"}}, "/dashboards/namespace"},
		{"unknown alert disabled", map[string]any{"prometheusRule": map[string]any{"disabled": []any{"SockhopDown"}}}, "/prometheusRule/disabled/0"},
		{"map pressure threshold above 1", map[string]any{"prometheusRule": map[string]any{"mapPressureThreshold": 1.5}}, "/prometheusRule/mapPressureThreshold"},
		{"no hazard guard reasons", map[string]any{"prometheusRule": map[string]any{"hazardGuards": map[string]any{"reasons": []any{}}}}, "/prometheusRule/hazardGuards/reasons"},
		{"hazard reason with a quote", map[string]any{"prometheusRule": map[string]any{"hazardGuards": map[string]any{"reasons": []any{`a"b`}}}}, "/prometheusRule/hazardGuards/reasons/0"},
		{"alert label not a Prometheus name", map[string]any{"prometheusRule": map[string]any{"alertLabels": map[string]any{"team-name": "x"}}}, "/prometheusRule/alertLabels"},
		{"toleration operator unknown", map[string]any{"tolerations": []any{map[string]any{"operator": "Any"}}}, "/tolerations/0/operator"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := render(t, tc.vals)
			if err == nil {
				t.Fatalf("values %v accepted, want a schema error mentioning %s", tc.vals, tc.field)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error does not mention %s:\n%v", tc.field, err)
			}
			t.Logf("%v", err)
		})
	}
}

func TestSchemaAcceptsGoodValues(t *testing.T) {
	for _, vals := range []map[string]any{
		{"logLevel": "debug"},
		{"logLevel": 2},
		{"logLevel": "4"},
		{"updateStrategy": map[string]any{"maxUnavailable": "100%"}},
		{"cgroup": map[string]any{"driver": "cgroupfs", "root": "/sockhop-e2e", "mount": "/sys/fs/cgroup/unified"}},
		{"accelerate": map[string]any{"namespaceLabel": map[string]any{"key": "accelerate", "value": "Yes_1.0"}}},
		{"proxyUIDs": []any{0, 65535}},
		{"capabilities": []any{}},
		{"serviceMonitor": map[string]any{"enabled": true, "interval": "1m30s", "scrapeTimeout": "10s"}},
	} {
		if _, _, err := render(t, vals); err != nil {
			t.Errorf("values %v rejected: %v", vals, err)
		}
	}
}

func TestMonitoring(t *testing.T) {
	for _, tc := range []struct {
		name            string
		vals            map[string]any
		service, pm, sm bool
	}{
		{"default", nil, false, false, false},
		{"podMonitor", map[string]any{"podMonitor": map[string]any{"enabled": true}}, false, true, false},
		{"serviceMonitor", map[string]any{"serviceMonitor": map[string]any{"enabled": true, "interval": "30s"}}, true, false, true},
		{"service only", map[string]any{"metrics": map[string]any{"service": map[string]any{"enabled": true}}}, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := mustRender(t, tc.vals)
			if (objs.service != nil) != tc.service || (objs.podMonitor != nil) != tc.pm || (objs.serviceMonitor != nil) != tc.sm {
				t.Fatalf("objects = %v; want Service %v PodMonitor %v ServiceMonitor %v", objs.kinds, tc.service, tc.pm, tc.sm)
			}
			podLabels := labels.Set(objs.daemonSet.Spec.Template.Labels)
			if s := objs.service; s != nil {
				if s.Spec.ClusterIP != corev1.ClusterIPNone {
					t.Errorf("Service clusterIP = %q, want None (headless)", s.Spec.ClusterIP)
				}
				if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
					t.Errorf("Service selector %v does not select the agent pods %v", s.Spec.Selector, podLabels)
				}
				if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Name != "metrics" || s.Spec.Ports[0].Port != 9962 ||
					s.Spec.Ports[0].TargetPort != intstr.FromString("metrics") {
					t.Errorf("Service ports = %s", js(s.Spec.Ports))
				}
			}
			if pm := objs.podMonitor; pm != nil {
				if !monitorSelects(t, pm, podLabels) {
					t.Errorf("PodMonitor does not select the agent pods")
				}
				if ep := dig(pm, "spec", "podMetricsEndpoints"); ep == nil || dig(ep.([]any)[0], "port") != "metrics" {
					t.Errorf("PodMonitor endpoints = %v", ep)
				}
			}
			if sm := objs.serviceMonitor; sm != nil {
				if !monitorSelects(t, sm, labels.Set(objs.service.Labels)) {
					t.Errorf("ServiceMonitor does not select the metrics Service")
				}
				ep := dig(sm, "spec", "endpoints").([]any)[0]
				if dig(ep, "port") != "metrics" || dig(ep, "interval") != "30s" {
					t.Errorf("ServiceMonitor endpoint = %v", ep)
				}
			}
		})
	}
}

func monitorSelects(t *testing.T, obj map[string]any, set labels.Set) bool {
	t.Helper()
	raw, err := json.Marshal(dig(obj, "spec", "selector"))
	if err != nil {
		t.Fatal(err)
	}
	var ls metav1.LabelSelector
	if err := json.Unmarshal(raw, &ls); err != nil {
		t.Fatal(err)
	}
	sel, err := metav1.LabelSelectorAsSelector(&ls)
	if err != nil {
		t.Fatal(err)
	}
	if ns := dig(obj, "spec", "namespaceSelector", "matchNames"); !reflect.DeepEqual(ns, []any{namespace}) {
		t.Errorf("namespaceSelector.matchNames = %v, want [%s]", ns, namespace)
	}
	return !sel.Empty() && sel.Matches(set)
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

func TestNotes(t *testing.T) {
	objs := mustRender(t, nil)
	for _, want := range []string{
		"kubectl label namespace NAME sockhop.dev/accelerate=enabled",
		`sockhop.dev/accelerate: "disabled"`,
		"reason=Accelerated",
		"reason=AccelerationFailed",
		"/metrics",
		"-- sockhop status",
		"helm uninstall sockhop -n sockhop-system",
	} {
		if !strings.Contains(objs.notes, want) {
			t.Errorf("NOTES.txt lacks %q:\n%s", want, objs.notes)
		}
	}
	objs = mustRender(t, map[string]any{"bpffsDir": "/sys/fs/bpf/hop"})
	if want := "-- sockhop --bpffs-dir /sys/fs/bpf/hop status"; !strings.Contains(objs.notes, want) {
		t.Errorf("NOTES.txt lacks %q:\n%s", want, objs.notes)
	}
	objs = mustRender(t, map[string]any{
		"accelerate":        map[string]any{"namespaceLabel": map[string]any{"key": "example.com/fast", "value": "yes"}},
		"uninstallOnDelete": false,
	})
	if want := "kubectl label namespace NAME example.com/fast=yes"; !strings.Contains(objs.notes, want) {
		t.Errorf("NOTES.txt lacks %q:\n%s", want, objs.notes)
	}
	if !strings.Contains(objs.notes, "uninstallOnDelete is false") || !strings.Contains(objs.notes, "`sockhop uninstall --yes`") {
		t.Errorf("NOTES.txt does not say that uninstall leaves the datapath:\n%s", objs.notes)
	}
}

// TestValuesDocumented checks that every value in values.yaml has a comment
// above it and that the schema knows every value and values.yaml every
// property of the schema.
func TestValuesDocumented(t *testing.T) {
	raw, err := os.ReadFile("values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := strings.TrimPrefix(path+"."+k.Value, ".")
			// A mapping of values is documented through its members; a leaf, a
			// list or a free-form mapping needs its own comment.
			if v.Kind == yaml.MappingNode && len(v.Content) > 0 && !freeForm[p] {
				walk(v, p)
				continue
			}
			if strings.TrimSpace(k.HeadComment) == "" {
				t.Errorf("values.yaml: %s has no comment above it", p)
			}
		}
	}
	walk(doc.Content[0], "")

	schemaRaw, err := os.ReadFile("values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(schemaRaw, &schema); err != nil {
		t.Fatal(err)
	}
	var defaults map[string]any
	if err := sigsyaml.Unmarshal(raw, &defaults); err != nil {
		t.Fatal(err)
	}
	if got := schema["$schema"]; got != "http://json-schema.org/draft-07/schema#" {
		t.Errorf("$schema = %v, want draft-07", got)
	}
	var cmp func(s map[string]any, v map[string]any, path string)
	cmp = func(s map[string]any, v map[string]any, path string) {
		props, _ := s["properties"].(map[string]any)
		if s["additionalProperties"] != false {
			t.Errorf("schema %s: additionalProperties is not false", path)
		}
		for name, sub := range props {
			val, ok := v[name]
			if !ok {
				// Optional members that default to absent.
				if !optional[strings.TrimPrefix(path+"."+name, ".")] {
					t.Errorf("schema property %s.%s is not in values.yaml", path, name)
				}
				continue
			}
			subS, _ := sub.(map[string]any)
			if freeForm[strings.TrimPrefix(path+"."+name, ".")] {
				continue
			}
			if subV, ok := val.(map[string]any); ok && subS["properties"] != nil {
				cmp(subS, subV, strings.TrimPrefix(path+"."+name, "."))
			}
		}
	}
	cmp(schema, defaults, "")
}

// freeForm are values that are maps of user data rather than chart settings.
var freeForm = map[string]bool{"resources": true, "nodeSelector": true, "podLabels": true}

// optional are schema properties with no default in values.yaml.
var optional = map[string]bool{"seccompProfile.localhostProfile": true, "appArmorProfile.localhostProfile": true}

func TestLint(t *testing.T) {
	for _, vals := range []map[string]any{
		nil,
		{"podMonitor": map[string]any{"enabled": true}, "serviceMonitor": map[string]any{"enabled": true},
			"dashboards": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true}},
	} {
		l := lint.All(chartDir, vals, namespace, false)
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint with %v: %s", vals, m)
			} else {
				t.Logf("helm lint: %s", m)
			}
		}
	}
}

// TestLintCatchesBadValues makes sure the lint test above can fail.
func TestLintCatchesBadValues(t *testing.T) {
	l := lint.All(chartDir, map[string]any{"proxyUIDs": []any{-1}}, namespace, false)
	if l.HighestSeverity < support.ErrorSev {
		t.Fatalf("lint accepted proxyUIDs [-1]: %v", l.Messages)
	}
}

func js(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
