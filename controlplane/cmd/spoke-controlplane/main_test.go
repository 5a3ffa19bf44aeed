package main

import "testing"

func TestListenAddress(t *testing.T) {
	for in, want := range map[string]string{
		":18000":           ":18000",
		"10.0.0.5:18000":   "10.0.0.5:18000",
		"fd00::5:18000":    "[fd00::5]:18000",
		"[fd00::5]:18000":  "[fd00::5]:18000",
		"localhost:9091":   "localhost:9091",
		"2001:db8::1:9091": "[2001:db8::1]:9091",
	} {
		if got := listenAddress(in); got != want {
			t.Errorf("listenAddress(%q) = %q, want %q", in, got, want)
		}
	}
}
