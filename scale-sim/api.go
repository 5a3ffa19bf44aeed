package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
	"github.com/spoke-proxy/spoke/scale-sim/cluster"
	"github.com/spoke-proxy/spoke/scale-sim/synthapi"
)

// apiSource is where the cluster's objects live: the synthetic API or a
// real kube-apiserver.
type apiSource interface {
	// Load creates every object of the cluster; the cluster's objects
	// become what the API stored.
	Load(ctx context.Context, c *cluster.Cluster) error
	// Update replaces an EndpointSlice and returns what the API stored.
	Update(ctx context.Context, es *discoveryv1.EndpointSlice) (*discoveryv1.EndpointSlice, error)
	// RESTConfig is an admin client configuration.
	RESTConfig() *rest.Config
	// SentBytes returns the bytes the API has sent to its clients, when it
	// knows.
	SentBytes() (uint64, bool)
	// Requests returns how many requests the API has received, when it
	// knows.
	Requests() (uint64, bool)
	// AgentTokens creates an agent pod on each node and returns a token
	// bound to each, for the control plane's audience.
	AgentTokens(ctx context.Context, nodes []string) ([]string, error)
	Stop()
}

type syntheticAPI struct{ s *synthapi.Server }

func startSynthetic() (*syntheticAPI, error) {
	s, err := synthapi.Start()
	if err != nil {
		return nil, err
	}
	return &syntheticAPI{s: s}, nil
}

func (a *syntheticAPI) Load(_ context.Context, c *cluster.Cluster) error {
	for _, n := range c.Nodes {
		if err := a.s.Set(n.DeepCopy()); err != nil {
			return err
		}
	}
	for i, svc := range c.Services {
		if err := a.s.Set(svc.DeepCopy()); err != nil {
			return err
		}
		for _, es := range c.Slices[i] {
			if err := a.s.Set(es.DeepCopy()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *syntheticAPI) Update(_ context.Context, es *discoveryv1.EndpointSlice) (*discoveryv1.EndpointSlice, error) {
	return es, a.s.Set(es.DeepCopy())
}

func (a *syntheticAPI) RESTConfig() *rest.Config { return a.s.RESTConfig() }

func (a *syntheticAPI) SentBytes() (uint64, bool) { return a.s.SentBytes(), true }

func (a *syntheticAPI) Requests() (uint64, bool) { return a.s.Requests(), true }

func (a *syntheticAPI) Stop() { a.s.Stop() }

type kubeAPI struct {
	server *kubeapi.Server // nil when the simulator did not start it
	config *rest.Config
	client kubernetes.Interface
}

func startKubeAPI(ctx context.Context, dir, kubeconfig string) (*kubeAPI, error) {
	a := &kubeAPI{}
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
		}
		a.config = cfg
	} else {
		startCtx, cancel := context.WithTimeout(ctx, 20*time.Minute)
		defer cancel()
		s, err := kubeapi.Start(startCtx, kubeapi.Options{DataDir: filepath.Join(dir, "kube-apiserver")})
		if err != nil {
			return nil, err
		}
		a.server, a.config = s, s.RESTConfig()
	}
	cfg := rest.CopyConfig(a.config)
	cfg.QPS, cfg.Burst = -1, 0
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		a.Stop()
		return nil, fmt.Errorf("creating API client: %w", err)
	}
	a.client = client
	return a, nil
}

func (a *kubeAPI) Load(ctx context.Context, c *cluster.Cluster) error {
	_, err := a.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cluster.Namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace: %w", err)
	}
	err = parallel(len(c.Nodes), func(i int) error {
		n, err := a.client.CoreV1().Nodes().Create(ctx, c.Nodes[i], metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating node %s: %w", c.Nodes[i].Name, err)
		}
		c.Nodes[i] = n
		return nil
	})
	if err != nil {
		return err
	}
	return parallel(len(c.Services), func(i int) error {
		svc := c.Services[i].DeepCopy()
		for p := range svc.Spec.Ports {
			svc.Spec.Ports[p].NodePort = 0 // allocated by the API server
		}
		svc, err := a.client.CoreV1().Services(cluster.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating service %d: %w", i, err)
		}
		c.Services[i] = svc
		for s, es := range c.Slices[i] {
			stored, err := a.client.DiscoveryV1().EndpointSlices(cluster.Namespace).Create(ctx, es, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("creating endpoint slice %s: %w", es.Name, err)
			}
			c.Slices[i][s] = stored
		}
		return nil
	})
}

func (a *kubeAPI) Update(ctx context.Context, es *discoveryv1.EndpointSlice) (*discoveryv1.EndpointSlice, error) {
	return a.client.DiscoveryV1().EndpointSlices(es.Namespace).Update(ctx, es, metav1.UpdateOptions{})
}

func (a *kubeAPI) RESTConfig() *rest.Config { return rest.CopyConfig(a.config) }

func (a *kubeAPI) SentBytes() (uint64, bool) { return 0, false }

func (a *kubeAPI) Requests() (uint64, bool) { return 0, false }

func (a *kubeAPI) Stop() {
	if a.server != nil {
		a.server.Stop()
	}
}

// writeKubeconfig writes a kubeconfig for cfg, with host replaced when
// host is not empty.
func writeKubeconfig(path string, cfg *rest.Config, host string) error {
	if host == "" {
		host = cfg.Host
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["sim"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile}
	kc.AuthInfos["sim"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken, ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		ClientCertificate: cfg.CertFile, ClientKey: cfg.KeyFile}
	kc.Contexts["sim"] = &clientcmdapi.Context{Cluster: "sim", AuthInfo: "sim"}
	kc.CurrentContext = "sim"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}
