package main

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
)

// What the chart installs: the agent pods' labels and container.
const (
	defaultNamespace = "sockhop-system"
	defaultSelector  = "app.kubernetes.io/name=sockhop,app.kubernetes.io/component=agent"
	agentContainer   = "sockhop-agent"
	// agentCLI is the node CLI inside the agent image.
	agentCLI = "/usr/local/bin/sockhop"
)

// cluster is what every command talks to: the API server, with the
// kubeconfig flags kubectl has, and where the agents run.
type cluster struct {
	flags     *genericclioptions.ConfigFlags
	namespace string // of the agents: --namespace, else sockhop-system
	selector  string // of the agent pods
	cs        kubernetes.Interface
	cfg       *rest.Config
}

func (c *cluster) connect() error {
	cfg, err := c.flags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	c.cfg, c.cs = cfg, cs
	if c.flags.Namespace != nil && *c.flags.Namespace != "" {
		c.namespace = *c.flags.Namespace
	}
	return nil
}

// agents lists the agent pods, sorted by node.
func (c *cluster) agents(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := c.cs.CoreV1().Pods(c.namespace).List(ctx, metav1.ListOptions{LabelSelector: c.selector})
	if err != nil {
		return nil, fmt.Errorf("list agent pods in %s (%s): %w", c.namespace, c.selector, err)
	}
	items := pods.Items
	sort.Slice(items, func(i, j int) bool {
		if items[i].Spec.NodeName != items[j].Spec.NodeName {
			return items[i].Spec.NodeName < items[j].Spec.NodeName
		}
		return items[i].Name < items[j].Name
	})
	return items, nil
}

// exec runs a command in the agent container of pod and returns its stdout
// and stderr; a non-zero exit is an error (with both outputs kept).
func (c *cluster) exec(ctx context.Context, pod *corev1.Pod, cmd ...string) (stdout, stderr []byte, err error) {
	req := c.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: agentContainer, Command: cmd, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	// As kubectl does: WebSocket first, SPDY for API servers that lack it.
	ws, err := remotecommand.NewWebSocketExecutor(c.cfg, "GET", req.URL().String())
	if err != nil {
		return nil, nil, fmt.Errorf("exec in %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(c.cfg, "POST", req.URL())
	if err != nil {
		return nil, nil, fmt.Errorf("exec in %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nil, nil, err
	}
	var out, errOut bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	if err != nil {
		err = fmt.Errorf("%s in %s/%s: %w%s", strings.Join(cmd, " "), pod.Namespace, pod.Name, err, stderrText(errOut.Bytes()))
	}
	return out.Bytes(), errOut.Bytes(), err
}

func stderrText(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// agentArg returns the value of --name=VALUE among the agent container's
// arguments.
func agentArg(pod *corev1.Pod, name string) (string, bool) {
	for _, ctr := range pod.Spec.Containers {
		if ctr.Name != agentContainer {
			continue
		}
		for _, a := range ctr.Args {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// podReady says whether the pod is Ready, and when not, why in a few words:
// the container's waiting or terminated reason, else the Ready condition's.
func podReady(p *corev1.Pod) (bool, string) {
	if p.DeletionTimestamp != nil {
		return false, "terminating"
	}
	for _, s := range p.Status.ContainerStatuses {
		if s.Name != agentContainer {
			continue
		}
		if w := s.State.Waiting; w != nil {
			return false, strings.TrimSpace(w.Reason + " " + w.Message)
		}
		if tm := s.State.Terminated; tm != nil {
			return false, fmt.Sprintf("terminated: %s (exit %d)", tm.Reason, tm.ExitCode)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return true, ""
			}
			why := strings.TrimSpace(c.Reason + " " + c.Message)
			if why == "" {
				why = "not ready"
			}
			return false, why
		}
	}
	return false, string(p.Status.Phase)
}

func restarts(p *corev1.Pod) int32 {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == agentContainer {
			return s.RestartCount
		}
	}
	return 0
}
