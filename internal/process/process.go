// Package process runs the child processes of Spoke's tools (the scale
// simulator, the benchmarks, the local clusters): each in a process group
// of its own that the kernel kills if the tool dies, its output appended
// to a log file, stopped with SIGTERM and, after a grace period, SIGKILL.
//
// Caveats: Linux only (Pdeathsig). Pdeathsig fires when the thread that
// started the child ends, not the process: start children from a thread
// that lives as long as they should.
package process

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a running child process.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	// Started is when it was started.
	Started time.Time
	// LogPath is the file its output is appended to.
	LogPath string
	done    chan struct{}
}

// Start starts cmd in a process group of its own (a Ctrl-C at the
// terminal reaches only the tool, which stops its children in order) that
// is killed if the tool dies. Its standard error, and its standard output
// unless cmd sets one, are appended to logPath. What cmd.SysProcAttr
// already sets (a cgroup) is kept.
func Start(name string, cmd *exec.Cmd, logPath string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	cmd.Stderr = logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pdeathsig = true, syscall.SIGKILL
	p := &Process{Name: name, Cmd: cmd, Started: time.Now(), LogPath: logPath, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group and, if the process has not
// ended after grace, SIGKILL; it returns when the process has ended.
func (p *Process) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// LogTail returns the end of the process's log, for errors.
func (p *Process) LogTail() string {
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}
