package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	sigsyaml "sigs.k8s.io/yaml"
)

// Every container names its image by a version that the kustomization's
// images block sets, so that users retarget the manifests with
// `kustomize edit set image`; nothing names latest.
func TestImagesAreNamedByVersionThroughTheKustomization(t *testing.T) {
	var k struct {
		Images []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	b, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.Unmarshal(b, &k); err != nil {
		t.Fatal(err)
	}
	tags := map[string]string{}
	for _, im := range k.Images {
		if im.NewTag == "" || im.NewTag == "latest" {
			t.Errorf("kustomization image %s: newTag %q", im.Name, im.NewTag)
		}
		tags[im.Name] = im.NewTag
	}
	seen := 0
	for _, u := range manifests(t) {
		for _, image := range containerImages(t, u) {
			seen++
			slash := strings.LastIndex(image, "/")
			repo, tag, ok := image, "", false
			if i := strings.LastIndex(image, ":"); i > slash {
				repo, tag, ok = image[:i], image[i+1:], true
			}
			if !ok || tag == "latest" {
				t.Errorf("%s %s: image %q is not named by a version", u.GetKind(), u.GetName(), image)
			}
			if want, ok := tags[repo]; !ok || want != tag {
				t.Errorf("%s %s: image %q; the kustomization sets %s to tag %q", u.GetKind(), u.GetName(), image, repo, want)
			}
		}
	}
	if seen != len(k.Images) {
		t.Errorf("%d container images in the manifests, %d in the kustomization", seen, len(k.Images))
	}
	files, _ := filepath.Glob("*.yaml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), ":latest") {
			t.Errorf("%s names an image :latest", f)
		}
	}
}

func containerImages(t *testing.T, u *unstructured.Unstructured) []string {
	t.Helper()
	containers, _, err := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	var out []string
	for _, c := range containers {
		image, _ := c.(map[string]any)["image"].(string)
		out = append(out, image)
	}
	return out
}
