package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/spoke-proxy/spoke/internal/process"
)

// child is a child process whose output goes to a log file.
type child struct{ *process.Process }

// startProcess starts argv in its own process group (a Ctrl-C at the
// terminal reaches this program, which stops its children in order).
func startProcess(name, logPath string, env []string, argv ...string) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	p, err := process.Start(name, cmd, logPath)
	if err != nil {
		return nil, err
	}
	return &child{p}, nil
}

// stop sends SIGTERM to the process and, after grace, SIGKILL to its whole
// process group.
func (p *child) stop(grace time.Duration) error {
	if p == nil || p.Exited() {
		return nil
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.Done():
		return fmt.Errorf("%s did not stop within %v: killed", p.Name, grace)
	case <-time.After(5 * time.Second):
		return errors.New(p.Name + " survived SIGKILL")
	}
}
