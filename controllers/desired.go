package controllers

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// The annotations a pod may carry.
const (
	// AnnotationAccelerate set to "disabled" opts a pod of an accelerated
	// namespace out; "enabled" is accepted and changes nothing.
	AnnotationAccelerate = "sockhop.dev/accelerate"
	// AnnotationExcludePorts lists ports, e.g. "5432,9300", whose connections
	// stay on TCP.
	AnnotationExcludePorts = "sockhop.dev/exclude-ports"

	accelerateDisabled = "disabled"
	accelerateEnabled  = "enabled"
)

// Default namespace label that opts a namespace in.
const (
	DefaultNamespaceLabelKey   = "sockhop.dev/accelerate"
	DefaultNamespaceLabelValue = "enabled"
)

// Reasons of the Events the agent records on pods.
const (
	ReasonAccelerated         = "Accelerated"
	ReasonAccelerationRemoved = "AccelerationRemoved"
	ReasonAccelerationFailed  = "AccelerationFailed"
)

// NamespaceSelector is the label that opts a namespace in.
type NamespaceSelector struct {
	Key   string
	Value string
}

// Matches reports whether the namespace carries the label.
func (s NamespaceSelector) Matches(ns *corev1.Namespace) bool {
	if ns == nil {
		return false
	}
	v, ok := ns.Labels[s.Key]
	return ok && v == s.Value
}

// Wanted decides from the API objects alone whether a pod should be
// accelerated on node: its namespace (nil when it does not exist or lacks
// the label in the cache) opts in, the pod does not opt out, it shares no
// network namespace with the node, runs on node, and has not terminated.
// When it should not, why says so in words fit for an Event.
func Wanted(pod *corev1.Pod, ns *corev1.Namespace, sel NamespaceSelector, node string) (ok bool, why string) {
	switch {
	case pod.Spec.NodeName != node:
		return false, fmt.Sprintf("pod runs on node %q, not %q", pod.Spec.NodeName, node)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return false, fmt.Sprintf("pod has terminated (phase %s)", pod.Status.Phase)
	case pod.Spec.HostNetwork:
		return false, "pod uses the host network"
	case !sel.Matches(ns):
		return false, fmt.Sprintf("namespace %s is not labelled %s=%s", pod.Namespace, sel.Key, sel.Value)
	case pod.Annotations[AnnotationAccelerate] == accelerateDisabled:
		return false, fmt.Sprintf("pod opted out with annotation %s=%s", AnnotationAccelerate, accelerateDisabled)
	}
	return true, ""
}

// PodConfig reads the datapath configuration of a pod from its annotations.
// An invalid annotation is an error naming it and its value: the pod then
// stays on TCP, because guessing what its owner meant could accelerate a
// port they wanted left alone.
func PodConfig(pod *corev1.Pod) (datapath.PodConfig, error) {
	if v, ok := pod.Annotations[AnnotationAccelerate]; ok && v != accelerateEnabled && v != accelerateDisabled {
		return datapath.PodConfig{}, fmt.Errorf("invalid annotation %s=%q: want %q or %q", AnnotationAccelerate, v, accelerateEnabled, accelerateDisabled)
	}
	v, ok := pod.Annotations[AnnotationExcludePorts]
	if !ok {
		return datapath.PodConfig{}, nil
	}
	ports, err := datapath.ParsePorts(v)
	if err != nil {
		return datapath.PodConfig{}, fmt.Errorf("invalid annotation %s=%q: %w", AnnotationExcludePorts, v, err)
	}
	return datapath.PodConfig{ExcludePorts: ports}, nil
}
