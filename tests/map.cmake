# lookalike map: PCA and t-SNE on generated data with known answers, and the end-to-end check on
# clothing-small photos (coordinates against numpy, SVG and PNG output, t-SNE clusters).
lookalike_test(test_map SOURCES test_map.cpp LIBS lookalike_viz)
lookalike_e2e(e2e_map map.py TIMEOUT 900 REQUIRES model_mobilenet_v2)
# Defects a review found in duplicates and map: a trained head named like a measured model, the
# rounded threshold in the text summary, t-SNE's advice for fewer than 4 points.
lookalike_e2e(e2e_duplicates_map_defects duplicates_map_defects.py TIMEOUT 300
              REQUIRES model_mobilenet_v2)
