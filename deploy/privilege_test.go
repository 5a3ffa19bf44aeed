package deploy_test

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// workload returns the pod template of the named Deployment or DaemonSet.
func workload(t *testing.T, kind, name string) corev1.PodSpec {
	t.Helper()
	for _, u := range manifests(t) {
		if u.GetKind() != kind || u.GetName() != name {
			continue
		}
		switch kind {
		case "DaemonSet":
			var ds appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
				t.Fatal(err)
			}
			return ds.Spec.Template.Spec
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &d); err != nil {
				t.Fatal(err)
			}
			return d.Spec.Template.Spec
		}
	}
	t.Fatalf("no %s %s in the manifests", kind, name)
	return corev1.PodSpec{}
}

// confined checks what every long-running container must have: no
// privilege, no escalation, every capability dropped but those named, the
// runtime's seccomp profile and a memory limit.
func confined(t *testing.T, c corev1.Container, caps ...corev1.Capability) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no securityContext", c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: privilege escalation allowed", c.Name)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: capabilities not all dropped: %v", c.Name, sc.Capabilities)
	} else if add := slices.Sorted(slices.Values(sc.Capabilities.Add)); !slices.Equal(add, caps) {
		t.Errorf("%s: capabilities %v, want %v", c.Name, add, caps)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccomp profile %v, want RuntimeDefault", c.Name, sc.SeccompProfile)
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: no memory limit", c.Name)
	}
}

func TestAgentRunsWithItsCapabilitiesOnly(t *testing.T) {
	spec := workload(t, "DaemonSet", "spoke-agent")
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	agent := spec.Containers[0]
	confined(t, agent, "BPF", "NET_ADMIN", "PERFMON")
	for _, m := range agent.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("agent: %s mounted Bidirectional (needs privilege)", m.Name)
		}
	}
	// The one privileged step is the init container that mounts bpffs on
	// the host, and it does nothing else.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want the bpffs mount alone", len(spec.InitContainers))
	}
	ic := spec.InitContainers[0]
	if strings.Join(ic.Args, " ") != "-mount-bpffs" || len(ic.Command) != 0 || ic.Image != agent.Image {
		t.Errorf("init container runs %v %v from %s, want the agent's image with -mount-bpffs only", ic.Command, ic.Args, ic.Image)
	}
}

func TestControlPlaneRunsAsNobodyOnThePodAddress(t *testing.T) {
	spec := workload(t, "Deployment", "spoke-controlplane")
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("%d containers, %d init containers", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	confined(t, c)
	if sc := c.SecurityContext; sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("control plane may run as root or write its root file system: %+v", sc)
	}
	// On the host network, a listener on every address would expose the
	// services on every interface of the node.
	for _, flag := range []string{"-grpc-address=", "-metrics-address="} {
		i := slices.IndexFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, flag) })
		if i < 0 || !strings.HasPrefix(c.Args[i], flag+"$(POD_IP):") {
			t.Errorf("%s not bound to $(POD_IP): %v", flag, c.Args)
		}
	}
}
