package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spoke-proxy/spoke/hack/internal/imagetar"
)

func TestParseSkips(t *testing.T) {
	in := "# comment\n\n\\[Disruptive\\] # restarts components\nLoadBalancer  #  needs a cloud\n"
	got, err := parseSkips(strings.NewReader(in), "skip.txt")
	if err != nil {
		t.Fatal(err)
	}
	want := []skip{{`\[Disruptive\]`, "restarts components"}, {"LoadBalancer", "needs a cloud"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parseSkips = %q, want %q", got, want)
	}
	for _, bad := range []string{"NoReason\n", "Empty # \n", "([ # unbalanced\n"} {
		if _, err := parseSkips(strings.NewReader(bad), "skip.txt"); err == nil || !strings.Contains(err.Error(), "skip.txt:1") {
			t.Errorf("parseSkips(%q) error = %v, want one naming skip.txt:1", bad, err)
		}
	}
}

func TestTheSkipFileParses(t *testing.T) {
	skips, err := readSkipFile("skip.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(skips) == 0 {
		t.Error("skip.txt has no pattern")
	}
}

// A report as e2e.test writes it: set-up nodes, specs the focus left out
// (message "skipped"), a spec skipped at run time, passes and a failure.
const junitReport = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="7" disabled="2" errors="0" failures="1" time="10">
  <testsuite name="Kubernetes e2e suite" tests="7">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[sig-network] Services should serve a basic endpoint" status="passed" time="3"></testcase>
    <testcase name="[sig-network] Services should be rejected" status="failed" time="3"><failure type="failed">boom</failure></testcase>
    <testcase name="[sig-network] Services should work with a LoadBalancer" status="skipped" time="0"><skipped message="skipped - Only supported for providers [gce]"></skipped></testcase>
    <testcase name="[sig-apps] Deployment should run" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[sig-network] Services should be pending" status="pending" time="0"><skipped message="pending"></skipped></testcase>
    <testcase name="[SynchronizedAfterSuite]" status="passed" time="1"></testcase>
    <testcase name="[sig-network] Conntrack should drop INVALID" status="passed" time="3"></testcase>
  </testsuite>
</testsuites>`

func TestSummarize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junit_01.xml")
	if err := os.WriteFile(path, []byte(junitReport), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := summarize(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "e2e: 2 passed, 1 failed, 1 skipped, 4 total"; got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
	if len(s.failedNames) != 1 || s.failedNames[0] != "[sig-network] Services should be rejected" {
		t.Errorf("failed = %q", s.failedNames)
	}
	if _, err := summarize(filepath.Join(t.TempDir(), "missing.xml")); err == nil {
		t.Error("summarize of a missing report: no error")
	}
}

func TestScanReady(t *testing.T) {
	out := "building\nREADY kubeconfig=/run/spoke-cluster/admin.kubeconfig nodes=3\nmore\n"
	if got := scanReady(strings.NewReader(out)); got != "/run/spoke-cluster/admin.kubeconfig" {
		t.Errorf("scanReady = %q", got)
	}
	if got := scanReady(strings.NewReader("failed\n")); got != "" {
		t.Errorf("scanReady without READY = %q", got)
	}
}

func TestImageFileNameFollowsInputs(t *testing.T) {
	a := imagetar.Spec{Ref: agnhostImage, Base: "/c/rootfs-1.tar", Files: map[string]string{"/agnhost": "/c/agnhost-1"}}
	b := a
	b.Files = map[string]string{"/agnhost": "/c/agnhost-2"}
	if imageFileName(a) == imageFileName(b) {
		t.Errorf("same file name %s for different binaries", imageFileName(a))
	}
	if !strings.HasPrefix(imageFileName(a), "agnhost_2.63.0-") {
		t.Errorf("file name %s", imageFileName(a))
	}
}

func TestE2EArgsPassTheNodeCount(t *testing.T) {
	args := e2eArgs(options{reportDir: "/r", numNodes: 3}, tools{}, "/k")
	if !slices.Contains(args, "--num-nodes=3") {
		t.Errorf("e2eArgs = %q, want --num-nodes=3", args)
	}
	if args := e2eArgs(options{reportDir: "/r"}, tools{}, ""); slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--num-nodes") }) {
		t.Errorf("dry-run e2eArgs = %q, want no --num-nodes", args)
	}
}
