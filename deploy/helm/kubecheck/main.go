// kubecheck reads `helm template` output on stdin and decodes every built-in object strictly into the
// Kubernetes API's own Go types, so a misspelt or misplaced field fails here instead of on a cluster
// (`helm lint` checks no fields). Other kinds (KEDA's ScaledObject) are left to tests/test_helm.py.
// Exit 1 with one line per problem.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

func newObject(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "batch/v1/Job":
		return &batchv1.Job{}
	case "batch/v1/CronJob":
		return &batchv1.CronJob{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	}
	return nil
}

func main() {
	in, err := io.ReadAll(bufio.NewReader(os.Stdin))
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubecheck:", err)
		os.Exit(2)
	}
	failed, checked := 0, 0
	for _, doc := range bytes.Split(in, []byte("\n---")) {
		if len(strings.TrimSpace(string(doc))) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			fmt.Printf("not YAML: %v\n", err)
			failed++
			continue
		}
		if head.Kind == "" {
			continue // a document of comments only
		}
		obj := newObject(head.APIVersion, head.Kind)
		if obj == nil {
			fmt.Fprintf(os.Stderr, "kubecheck: skipped %s %s (%s)\n", head.Kind, head.Metadata.Name, head.APIVersion)
			continue
		}
		checked++
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			fmt.Printf("%s %s: %v\n", head.Kind, head.Metadata.Name, err)
			failed++
		}
	}
	fmt.Fprintf(os.Stderr, "kubecheck: %d objects checked, %d failed\n", checked, failed)
	if failed > 0 || checked == 0 {
		os.Exit(1)
	}
}
