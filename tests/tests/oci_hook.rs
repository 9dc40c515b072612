netiso_testkit::privileged_tests![];
