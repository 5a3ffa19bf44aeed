package main

import (
	"encoding/xml"
	"fmt"
	"os"
	"strings"
)

// junitSuites is the part of a Ginkgo JUnit report the summary reads.
type junitSuites struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitCase struct {
	Name    string `xml:"name,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct{} `xml:"failure"`
	Error   *struct{} `xml:"error"`
}

// summary counts the specs that were selected: Ginkgo's JUnit report also
// lists every spec the focus and skip expressions left out, as skipped with
// the bare message "skipped"; those are not counted. Suite set-up nodes
// ([SynchronizedBeforeSuite] ...) count only when they fail.
type summary struct {
	passed, failed, skipped int
	failedNames             []string
}

func (s summary) String() string {
	return fmt.Sprintf("e2e: %d passed, %d failed, %d skipped, %d total", s.passed, s.failed, s.skipped, s.passed+s.failed+s.skipped)
}

func summarize(path string) (summary, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return summary{}, fmt.Errorf("reading the JUnit report: %w", err)
	}
	var r junitSuites
	if err := xml.Unmarshal(b, &r); err != nil {
		return summary{}, fmt.Errorf("parsing %s: %w", path, err)
	}
	var s summary
	for _, suite := range r.Suites {
		for _, c := range suite.Cases {
			s.add(c)
		}
	}
	return s, nil
}

func (s *summary) add(c junitCase) {
	switch {
	case c.Failure != nil || c.Error != nil:
		s.failed++
		s.failedNames = append(s.failedNames, c.Name)
	case isSetupNode(c.Name):
	case c.Skipped == nil:
		s.passed++
	case c.Skipped.Message != "skipped" && c.Skipped.Message != "pending":
		s.skipped++ // skipped at run time, with a reason
	}
}

// isSetupNode tells the suite's set-up and reporting nodes from specs.
func isSetupNode(name string) bool {
	for _, p := range []string{"[SynchronizedBeforeSuite]", "[SynchronizedAfterSuite]", "[BeforeSuite]", "[AfterSuite]", "[ReportBeforeSuite]", "[ReportAfterSuite]", "[DeferCleanup (Suite)]"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
