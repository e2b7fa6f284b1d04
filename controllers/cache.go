package controllers

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions scope the manager's cache to what the reconciler of node
// reads: the pods of that node, and the namespaces that carry the label (a
// namespace that loses it leaves the cache, which is a delete event).
// Managed fields are dropped to keep the agent small on busy nodes.
func CacheOptions(node string, sel NamespaceSelector) (cache.Options, error) {
	if node == "" {
		return cache.Options{}, fmt.Errorf("cache options: empty node name")
	}
	nsSel, err := labels.ValidatedSelectorFromSet(labels.Set{sel.Key: sel.Value})
	if err != nil {
		return cache.Options{}, fmt.Errorf("cache options: namespace label %s=%s: %w", sel.Key, sel.Value, err)
	}
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}:       {Field: fields.OneTermEqualSelector("spec.nodeName", node)},
			&corev1.Namespace{}: {Label: nsSel},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	}, nil
}
