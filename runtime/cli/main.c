/*
 * main.c — the s2lora binary's entry point. Everything else of the command line is in the
 * other files of runtime/cli (cli.c dispatches), so that the test suites can link it.
 */
#include "runtime/cli/cli.h"

int main(int argc, char **argv)
{
    return s2_cli_main(argc, argv);
}
