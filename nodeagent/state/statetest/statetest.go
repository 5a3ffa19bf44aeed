// Package statetest writes agent state files of a given size, for tests and
// benchmarks that start an agent from one.
package statetest

import (
	"fmt"

	"github.com/spoke-proxy/spoke/nodeagent/state"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// NodeAddr is the address of the node the written views are for.
const NodeAddr = "192.168.0.1"

// Resources returns node-1's node resource and services ClusterIP services
// (10.96.0.0/16) of one TCP port with endpoints endpoints each (from
// 10.128.0.0/9), each versioned by its content as the control plane does.
func Resources(services, endpoints int) ([]*spokev1.Resource, error) {
	if services > 1<<16 || services*endpoints > 1<<23 {
		return nil, fmt.Errorf("%d services of %d endpoints do not fit the address ranges", services, endpoints)
	}
	rs := []*spokev1.Resource{{Name: spokev1.NodeResourceName, Version: "n1",
		Kind: &spokev1.Resource_Node{Node: &spokev1.Node{Name: "node-1", Addresses: []string{NodeAddr}}}}}
	for i := range services {
		port := &spokev1.ServicePort{Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: 80,
			Internal: &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT}}
		for j := range endpoints {
			k := i*endpoints + j
			port.Internal.Endpoints = append(port.Internal.Endpoints,
				&spokev1.Endpoint{Ip: fmt.Sprintf("10.%d.%d.%d", 128+k>>16, k>>8&255, k&255), Port: 8080})
		}
		s := &spokev1.Service{Namespace: "default", Name: fmt.Sprintf("svc-%d", i),
			ClusterIps: []string{fmt.Sprintf("10.96.%d.%d", i>>8, i&255)}, Ports: []*spokev1.ServicePort{port}}
		r := &spokev1.Resource{Name: "default/" + s.Name, Kind: &spokev1.Resource_Service{Service: s}}
		v, err := spokev1.ContentVersion(r)
		if err != nil {
			return nil, err
		}
		r.Version = v
		rs = append(rs, r)
	}
	return rs, nil
}

// Write creates the state file path holding node-1's node and services
// services of endpoints endpoints each (see Resources).
func Write(path string, services, endpoints int) error {
	rs, err := Resources(services, endpoints)
	if err != nil {
		return err
	}
	return update(path, rs)
}

// Touch stores nothing new in the state file at path, which gives it a new
// stamp: a datapath stamped with the old one no longer vouches for it.
func Touch(path string) error { return update(path, nil) }

// update stores rs in the state file at path, in one update.
func update(path string, rs []*spokev1.Resource) error {
	st, err := state.Open(path)
	if err != nil {
		return err
	}
	if err := st.Update(rs, nil, nil); err != nil {
		st.Close()
		return err
	}
	return st.Close()
}
