"""The package version, a module of its own so that modules inside the package read it without importing the
package root (which imports them: an import cycle)."""

__version__ = "0.1.0"
