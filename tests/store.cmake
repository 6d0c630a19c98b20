# index/ and store/ tests: random seeded vectors, no model needed.
lookalike_test(test_index SOURCES test_index.cpp LIBS lookalike_index OpenMP::OpenMP_CXX)
lookalike_test(test_index_quality SOURCES test_index_quality.cpp LIBS lookalike_index)
lookalike_test(test_catalog SOURCES test_catalog.cpp LIBS lookalike_store SQLite::SQLite3)
# The WAL damage check on real SQLite write-ahead logs, damaged by the test.
lookalike_test(test_wal_check SOURCES test_wal_check.cpp LIBS lookalike_store SQLite::SQLite3)
# SQLite: the tests damage catalogs and age their schema through raw connections. spdlog: the
# upkeep test counts index rebuilds through the warnings they log.
lookalike_test(test_collection SOURCES test_collection.cpp
  LIBS lookalike_store SQLite::SQLite3 spdlog::spdlog)
# Threads searching while one writes; LOOKALIKE_STRESS_SECONDS (default 10) bounds it.
# scripts/tsan.sh builds and runs it under ThreadSanitizer.
lookalike_test(test_store_stress SOURCES test_store_stress.cpp LIBS lookalike_store Threads::Threads)

# The crash test's child: a separate program, so that the parent forks and execs it rather than
# forking a process whose OpenMP/BLAS threads would not survive fork().
add_executable(lookalike_crash_writer crash_writer.cpp)
target_link_libraries(lookalike_crash_writer PRIVATE lookalike_store)
target_compile_definitions(lookalike_crash_writer PRIVATE
  LOOKALIKE_FIXTURES="${LOOKALIKE_FIXTURES}")
lookalike_test(test_crash SOURCES test_crash.cpp LIBS lookalike_store)
target_compile_definitions(test_crash PRIVATE
  LOOKALIKE_CRASH_WRITER="$<TARGET_FILE:lookalike_crash_writer>")
add_dependencies(test_crash lookalike_crash_writer)
